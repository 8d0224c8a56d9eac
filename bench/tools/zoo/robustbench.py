"""RobustBench zoo models (``--model robustbench:NAME``), loaded by the ``robustbench`` package's own
loader from a local folder in RobustBench's layout, ``DIR/<dataset>/Linf/<NAME>.pt``, and never
downloaded (the file must exist before the loader is called, which would otherwise try the
network). robustbench is optional and imports AutoAttack under its old module name; see
docs/evaluation.md, "RobustBench models"."""

from __future__ import annotations

import sys
import warnings
from pathlib import Path

from bench.core.errors import BenchError
from bench.run.evaluation import EvalOptions
from bench.tools.zoo.external import evaluate_external, file_sha256

PREFIX = "robustbench:"
THREAT_MODEL = "Linf"
ZOO_DATASETS = ("cifar10", "cifar100", "imagenet")
INSTALL = "pip install 'trilemma-bench[robustbench]'"


def parse_model_ref(ref: str) -> str:
    """``robustbench:NAME`` -> NAME (one line for any other form)."""
    if not ref.startswith(PREFIX) or not ref[len(PREFIX) :].strip():
        raise BenchError(
            f"--model {ref!r} is not a model this benchmark can load; write --model robustbench:NAME "
            "(a RobustBench zoo entry, e.g. robustbench:Wong2020Fast)"
        )
    return ref[len(PREFIX) :].strip()


def import_robustbench():
    """The robustbench package, importable with the published AutoAttack package (one line if absent)."""
    try:
        import pyautoattack

        sys.modules.setdefault("autoattack", pyautoattack)
        with warnings.catch_warnings():  # its pkg_resources import warns on every load
            warnings.simplefilter("ignore")
            import robustbench.utils
            from robustbench.model_zoo import model_dicts  # noqa: F401
    except ImportError as exc:
        raise BenchError(
            f"--model robustbench:... needs the robustbench package ({exc}); install it with: {INSTALL}"
        )
    import robustbench

    return robustbench


def zoo_entries(dataset: str) -> dict:
    """NAME -> zoo entry of RobustBench's ``dataset`` / Linf model zoo."""
    import_robustbench()
    from robustbench.model_zoo import model_dicts
    from robustbench.model_zoo.enums import BenchmarkDataset, ThreatModel

    return model_dicts[BenchmarkDataset(dataset)][ThreatModel(THREAT_MODEL)]


def download_command(name: str, model_dir: str | Path, dataset: str) -> str:
    return (
        f"python -c \"from robustbench.utils import load_model; load_model('{name}', model_dir='{model_dir}', "
        f"dataset='{dataset}', threat_model='{THREAT_MODEL}')\""
    )


def model_file(name: str, model_dir: str | Path, dataset: str) -> Path:
    """Where RobustBench's loader reads NAME's weights under ``model_dir``."""
    return Path(model_dir) / dataset / THREAT_MODEL / f"{name}.pt"


def load_zoo_model(name: str, model_dir: str | Path, dataset: str = "cifar10"):
    """(model, file) of zoo entry NAME, through ``robustbench.utils.load_model``, from ``model_dir``
    only. Every failure is one line: an unknown name, an absent file (with the folder it belongs in
    and RobustBench's download command to run on a machine that has the network), a file that does
    not fit the entry's architecture."""
    if dataset not in ZOO_DATASETS:
        raise BenchError(
            f"--zoo-dataset {dataset!r} is not a RobustBench dataset; choose one of: "
            f"{', '.join(ZOO_DATASETS)}"
        )
    entries = zoo_entries(dataset)
    if name not in entries:
        close = sorted(n for n in entries if n.lower().startswith(name.lower()[:4]))[:5]
        raise BenchError(
            f"{name!r} is not in RobustBench's {dataset} {THREAT_MODEL} model zoo"
            + (f" (close: {', '.join(close)})" if close else f" ({len(entries)} entries)")
        )
    import timm
    from robustbench.utils import load_model

    if timm.is_model(f"{name.lower().replace('-', '_')}_{dataset}_{THREAT_MODEL.lower()}"):
        raise BenchError(
            f"RobustBench serves {name} through timm's hub, not as a file under --model-dir; it cannot "
            "be loaded offline here"
        )
    path = model_file(name, model_dir, dataset)
    if not path.is_file():
        raise BenchError(
            f"no weights for {name}: {path} does not exist; put {name}.pt in {path.parent}/ "
            f"(download it where the network is reachable with: {download_command(name, model_dir, dataset)})"
        )
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            model = load_model(
                model_name=name,
                model_dir=str(model_dir),
                dataset=dataset,
                threat_model=THREAT_MODEL,
            )
    except (ConnectionError, OSError) as exc:  # requests' ConnectionError is an OSError
        raise BenchError(
            f"RobustBench could not load {path} ({type(exc).__name__}); put a complete {name}.pt in "
            f"{path.parent}/ (download command: {download_command(name, model_dir, dataset)})"
        )
    except (RuntimeError, KeyError, ValueError, TypeError, EOFError, AttributeError) as exc:
        first = str(exc).strip().splitlines()[0][:160] if str(exc).strip() else type(exc).__name__
        raise BenchError(
            f"{path} does not hold weights of RobustBench's {name} ({type(exc).__name__}: {first})"
        )
    except Exception as exc:  # unpickling errors of a damaged or foreign file
        raise BenchError(f"{path} is not a readable RobustBench checkpoint ({type(exc).__name__})")
    return model.eval(), path


def evaluate_zoo(
    ref: str,
    opts: EvalOptions,
    *,
    model_dir: str | Path,
    dataset: str = "cifar10",
    zoo_dataset: str | None = None,
    **where,
):
    """`bench eval --model robustbench:NAME`: load the zoo model and evaluate it into its
    ``kind: "external"`` record (``where``: ``out``, ``data_dir``, ``device`` of
    :func:`bench.tools.zoo.external.evaluate_external`)."""
    name = parse_model_ref(ref)
    if zoo_dataset is None:
        if dataset not in ZOO_DATASETS:
            raise BenchError(
                f"--dataset {dataset} is not one of RobustBench's ({', '.join(ZOO_DATASETS)}); say which "
                "zoo the model comes from with --zoo-dataset, e.g. --zoo-dataset cifar10"
            )
        zoo_dataset = dataset
    opts.check()
    net, path = load_zoo_model(name, model_dir, zoo_dataset)
    source = {
        "source": "robustbench",
        "name": name,
        "dataset": zoo_dataset,
        "threat_model": THREAT_MODEL,
        "file": str(path),
        "sha256": file_sha256(path),
        "robustbench": getattr(import_robustbench(), "__version__", None),
    }
    return evaluate_external(
        net, opts, method=f"{PREFIX}{name}", arch=name, dataset=dataset, source=source, **where
    )
