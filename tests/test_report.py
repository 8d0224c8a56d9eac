"""`bench report`: the trade-off planes, the page, and the page in a real browser.

The browser test opens the page in headless Chromium (Debian's ``chromium``; ``.ci/run``
installs it and sets ``BENCH_REQUIRE_BROWSER=1`` so that CI fails rather than skips without
it), checks that every image decoded and no script error happened, and saves a screenshot to
``test-artifacts/report.png``.
"""

from __future__ import annotations

import base64
import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest
from conftest import REPO_ROOT

ARTIFACTS = REPO_ROOT / "test-artifacts"


# -- the planes, on records written here -------------------------------------------------------


def _record(
    run_id,
    method,
    dataset="shapes10",
    seed=0,
    clean=0.8,
    pgd=None,
    aa=None,
    fid=None,
    changes=None,
    protocol="standard",
    n=500,
):
    ev = {"clean": {"accuracy": clean, "n_examples": n}}
    if pgd is not None:
        ev["pgd"] = {"accuracy": pgd, "n_examples": n, "reliable": True}
    if aa is not None:
        ev["autoattack"] = {"accuracy": aa, "n_examples": n, "reliable": True}
    if fid is not None:
        ev["fid"] = {"fid": fid, "n_examples": 1000}
    return {
        "run_id": run_id,
        "method": method,
        "dataset": dataset,
        "arch": "resnet8",
        "preset": "cpu",
        "seed": seed,
        "status": "complete",
        "changes": changes or {},
        "training": {},
        "timings": {},
        "evaluations": {protocol: ev},
    }


def _planes(records, reference=False):
    from bench.leaderboard.compare import leaderboard_and_meta
    from bench.leaderboard.grouping import group_seeds
    from bench.leaderboard.report.tables import planes

    df, meta = leaderboard_and_meta(records, reference=reference, ci=True)
    return planes(group_seeds(df), meta)


def test_plane_uses_the_strongest_attack_each_run_has_and_the_pareto_front():
    (plane,) = _planes(
        [
            _record("a", "ce", clean=0.95, pgd=0.01),
            _record("b", "pgd-at", clean=0.80, pgd=0.50, aa=0.45, fid=90.0),
            _record(
                "c", "trades", clean=0.78, pgd=0.52, aa=0.40, fid=80.0
            ),  # beaten by b on both axes
            _record("d", "jem++", clean=0.90, pgd=0.30, fid=30.0),
        ]
    )
    by = {p.label: p for p in plane.points}
    assert (
        by["pgd-at"].robust == 45.0 and by["pgd-at"].attack == "autoattack"
    )  # AA beats PGD when there
    assert by["ce"].robust == 1.0 and by["ce"].attack == "pgd"  # only PGD stored
    assert [p.label for p in plane.pareto()] == ["pgd-at", "jem++", "ce"]
    # on all three axes trades is not beaten either: pgd-at is more accurate and robust, trades has the lower FID;
    # ce takes no part (no FID)
    assert [p.label for p in plane.pareto3()] == ["trades", "pgd-at", "jem++"]
    from bench.leaderboard.report.figures import tradeoff

    legend = [t.get_text() for t in tradeoff([plane]).axes[0].get_legend().get_texts()]
    assert "ringed: no run beats it on clean, robust and fid at once" in legend
    assert plane.generation_column == "standard/fid"
    assert by["ce"].generation is None and by["jem++"].generation == 30.0
    assert plane.n_examples["standard/clean"] == [500]


def test_planes_never_mix_protocols_or_datasets_and_fold_seeds():
    planes = _planes(
        [
            _record("s0", "pgd-at", seed=0, clean=0.80, pgd=0.40),
            _record("s1", "pgd-at", seed=1, clean=0.82, pgd=0.44),
            _record("c", "ce", dataset="cifar10", clean=0.9, pgd=0.0),
            _record("q", "ce", clean=0.9, pgd=0.0, protocol="quick"),
        ]
    )
    assert {(p.protocol, p.dataset) for p in planes} == {
        ("standard", "shapes10"),
        ("standard", "cifar10"),
        ("quick", "shapes10"),
    }
    (std,) = [p for p in planes if p.protocol == "standard" and p.dataset == "shapes10"]
    (pt,) = std.points
    assert pt.seeds == 2 and pt.clean == pytest.approx(81.0) and pt.robust == pytest.approx(42.0)
    assert pt.clean_err is not None and pt.clean_err > 0  # the 95 % t half-width over the two seeds


def test_reported_rows_join_only_planes_of_their_dataset():
    planes = _planes(
        [_record("m", "ebjdat", dataset="cifar10", clean=0.9, pgd=0.5, protocol="paper")],
        reference=True,
    )
    (paper,) = [p for p in planes if p.protocol == "paper"]
    reported = [p for p in paper.points if p.kind == "reported"]
    assert reported and all(
        "CIFAR-100" not in p.label for p in reported
    )  # the paper's CIFAR-100 row stays out
    assert not _planes(
        [_record("m", "ce", dataset="shapes10", clean=0.9, pgd=0.5, protocol="paper")],
        reference=True,
    )[0].points[1:]  # no published shapes10 numbers: only the measured point


def test_external_models_evaluated_here_join_the_plane_and_its_pareto_front():
    """A RobustBench model evaluated here (record kind external) is a measured point of its
    protocol's plane, drawn as a square, and can sit on the front; it opens a plane of its own
    dataset even without a trained run there."""
    from bench.leaderboard.report.figures import tradeoff

    zoo = {**_record("z", "robustbench:Standard", clean=0.91, pgd=0.6, aa=0.55), "kind": "external"}
    planes = _planes(
        [
            _record("a", "pgd-at", clean=0.80, pgd=0.50),
            zoo,
            {
                **_record("z2", "robustbench:Other", dataset="cifar10", clean=0.9, pgd=0.5),
                "kind": "external",
            },
        ]
    )
    by_dataset = {p.dataset: p for p in planes}
    assert set(by_dataset) == {"shapes10", "cifar10"}
    plane = by_dataset["shapes10"]
    by = {p.label: p for p in plane.points}
    assert (
        by["robustbench:Standard"].kind == "external" and by["robustbench:Standard"].robust == 55.0
    )
    assert [p.label for p in plane.pareto()] == [
        "robustbench:Standard"
    ]  # it beats the pgd-at run on both axes
    fig = tradeoff([plane])
    labels = [t.get_text() for t in fig.axes[0].get_legend().get_texts()]
    assert "external model, evaluated here" in labels
    import matplotlib.pyplot as plt

    plt.close(fig)


# -- the page, from real runs -----------------------------------------------------------------


@pytest.fixture(scope="module")
def report_results(tmp_path_factory, shapes_data_dir):
    """A ce run, two pgd-at seeds and a jem++ run (a buffer grid), evaluated under `standard` with
    clean, PGD and energy; the ce run also under `quick` only (from its end-of-run evaluation)."""
    from conftest import _run_main, make_tiny_args

    out = tmp_path_factory.mktemp("report") / "results"
    for method, seed in (("ce", 0), ("pgd-at", 0), ("pgd-at", 1), ("jem++", 0)):
        res = _run_main(
            [
                "run",
                "--method",
                method,
                *make_tiny_args(out, shapes_data_dir, steps=4, seed=seed),
                "--set",
                "method.sampler.buffer_size=64" if method == "jem++" else "train.log_every=2",
            ]
        )
        assert res.exit_code == 0, res.stderr
    for run in sorted((out / "runs").iterdir()):
        if "-ce-" in run.name:
            continue
        res = _run_main(
            [
                "eval",
                run.name,
                "--out",
                out,
                "--protocol",
                "standard",
                "--metrics",
                "clean,pgd,energy",
                "-n",
                "32",
                "-q",
                "--set",
                "pgd.steps=2",
                "--set",
                'energy.attack={"steps": 2}',
                "--set",
                "energy.n_generated=16",
                "--set",
                "energy.sampler_steps=2",
            ]
        )
        assert res.exit_code == 0, res.stderr
    return out


def _data_uris(page: str) -> list[bytes]:
    return [
        base64.b64decode(m)
        for m in re.findall(r'src="data:image/png;base64,([A-Za-z0-9+/=]+)"', page)
    ]


def test_report_writes_one_self_contained_page_with_its_figures(report_results, bench_cli):
    res = bench_cli("report", "--out", report_results)
    assert res.exit_code == 0, res.stderr
    page_path = Path(res.stdout.strip().splitlines()[-1])
    assert page_path == report_results / "report" / "index.html"
    page = page_path.read_text()
    assert "http://" not in page and "https://" not in page  # nothing to fetch
    images = _data_uris(page)
    assert len(images) >= 4 and all(img.startswith(b"\x89PNG") for img in images)
    figures = {p.name for p in (page_path.parent / "figures").iterdir()}
    assert {
        "tradeoff.png",
        "tradeoff.svg",
        "energy-standard.png",
        "energy-standard.svg",
        "curves.png",
    } <= figures
    # every figure names its protocol and sample counts; the energy panel shows every evaluated run
    svg = (page_path.parent / "figures" / "tradeoff.svg").read_text()
    assert "protocol standard" in svg and "protocol quick" in svg and "n = 32" in svg
    energy_svg = (page_path.parent / "figures" / "energy-standard.svg").read_text()
    assert energy_svg.count("protocol standard ·") == 3  # pgd-at x2 and jem++, one shared axis
    assert "gap adv" in energy_svg and "W1" in energy_svg
    # no generation number anywhere: grey points, and the legend says why
    assert "no FID/KID stored" in svg
    # the leaderboard: the same numbers as bench compare, with n
    table = bench_cli(
        "compare", "--out", report_results, "--protocol", "standard", "--format", "json"
    )
    rows = json.loads(table.stdout)
    (pgd,) = [
        c for c in rows[0] if c.startswith("standard/pgd") and " " not in c
    ]  # pgd[steps=2]: its settings
    pgd_values = {f"{r[pgd]:g}" for r in rows if r.get(pgd) is not None}
    assert pgd_values and all(f"<td>{v}" in page for v in pgd_values)
    assert (
        "(seed 1)" in energy_svg and "replay buffer at the last checkpoint" in page
    )  # jem++'s sample grid


def test_report_bad_input_is_one_line(report_results, bench_cli, tmp_path):
    empty = tmp_path / "empty"
    res = bench_cli("report", "--out", empty)
    assert res.exit_code != 0 and res.error_lines and "no finished runs" in res.stderr
    res = bench_cli("report", "--out", report_results, "--filter", "method=nosuch")
    assert res.exit_code != 0 and "no run matches --filter method=nosuch" in res.stderr
    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    res = bench_cli("report", "--out", report_results, "--html", blocker / "report.html")
    assert (
        res.exit_code != 0
        and f"cannot write the report to {blocker / 'report.html'} (" in res.stderr
        and "Traceback" not in res.stderr
    )
    res = bench_cli("report", "--out", report_results, "--html", tmp_path / "report.txt")
    assert (
        res.exit_code != 0
        and "must name an .html file" in res.stderr
        and not (tmp_path / "report.txt").exists()
    )
    res = bench_cli("report", "--out", report_results, "--protocol", "paper")
    assert res.exit_code != 0 and "no numbers of protocol 'paper'" in res.stderr
    for r in (res,):
        assert len(r.error_lines) == 1


def test_report_filter_and_protocol_narrow_the_page(report_results, bench_cli, tmp_path):
    html = tmp_path / "only" / "pgd.html"
    res = bench_cli(
        "report",
        "--out",
        report_results,
        "--filter",
        "method=pgd-at",
        "--protocol",
        "standard",
        "--html",
        html,
        "--no-reference",
    )
    assert res.exit_code == 0, res.stderr
    page = html.read_text()
    assert "2 run(s)" in page and "jem++" not in page and "protocol quick" not in page
    assert (html.parent / "figures" / "tradeoff.png").is_file()


def _chromium() -> str | None:
    return (
        shutil.which("chromium")
        or shutil.which("chromium-browser")
        or shutil.which("google-chrome")
    )


def test_report_opens_in_a_real_browser_with_every_image_decoded(
    report_results, bench_cli, tmp_path
):
    browser = _chromium()
    if browser is None:
        if os.environ.get("BENCH_REQUIRE_BROWSER"):
            pytest.fail(
                "chromium is not installed (apt-get install chromium); CI installs it in .ci/run"
            )
        pytest.skip("no chromium on PATH (apt-get install chromium)")
    html = tmp_path / "page" / "index.html"
    assert bench_cli("report", "--out", report_results, "--html", html).exit_code == 0
    flags = [
        browser,
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--hide-scrollbars",
        f"--user-data-dir={tmp_path / 'profile'}",
        "--virtual-time-budget=5000",
    ]
    dom = subprocess.run(
        [*flags, "--dump-dom", html.as_uri()], capture_output=True, text=True, timeout=120
    )
    assert dom.returncode == 0, dom.stderr[-2000:]
    body = re.search(r"<body([^>]*)>", dom.stdout)
    assert body, dom.stdout[:500]
    attrs = dict(re.findall(r'(data-[a-z-]+)="([^"]*)"', body.group(1)))
    n_images = len(_data_uris(html.read_text()))
    assert attrs.get("data-images") == str(n_images) and n_images >= 4, attrs
    assert attrs.get("data-broken-images") == "0", attrs  # naturalWidth > 0 for every image
    assert attrs.get("data-errors") == "0", attrs
    console_errors = [
        ln for ln in dom.stderr.splitlines() if "CONSOLE" in ln and "ERROR" in ln.upper()
    ]
    assert not console_errors, console_errors
    ARTIFACTS.mkdir(exist_ok=True)
    shot = ARTIFACTS / "report.png"
    res = subprocess.run(
        [*flags, "--window-size=1400,3200", f"--screenshot={shot}", html.as_uri()],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert res.returncode == 0 and shot.is_file() and shot.stat().st_size > 10_000, res.stderr[
        -2000:
    ]


def test_a_broken_image_is_caught_by_the_page_check(tmp_path):
    """The check the browser test relies on fails on a page whose image does not decode."""
    browser = _chromium()
    if browser is None:
        pytest.skip("no chromium on PATH")
    from bench.leaderboard.report.page import Section, render_page

    sec = Section("broken")
    sec.figure(b"\x89PNG not really a png", "a broken figure", "broken")
    page = tmp_path / "broken.html"
    page.write_text(render_page("t", [], [sec]))
    dom = subprocess.run(
        [
            browser,
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            f"--user-data-dir={tmp_path / 'p'}",
            "--virtual-time-budget=3000",
            "--dump-dom",
            page.as_uri(),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert 'data-broken-images="1"' in dom.stdout and "did not load" in dom.stdout


def test_a_run_squeezed_by_the_shared_energy_axis_gets_a_zoomed_inset():
    """ce's generated samples at E ~ -400 stretch the shared axis; the runs whose energies sit near
    -5 get an inset on their own range, the stretched run itself none."""
    import matplotlib.pyplot as plt
    import numpy as np

    from bench.leaderboard.report.figures import EnergyPanel, energy_panels

    rng = np.random.default_rng(0)
    result = {"gap_adv": 1.0, "w1_adv": 1.0, "gap_gen": 2.0, "w1_gen": 2.0}
    wide = EnergyPanel(
        "ce",
        {
            "clean": rng.normal(-8, 1, 300),
            "adversarial": rng.normal(-6, 1, 300),
            "generated": rng.normal(-400, 5, 300),
        },
        result,
    )
    narrow = EnergyPanel(
        "jem++",
        {
            "clean": rng.normal(-5, 0.3, 300),
            "adversarial": rng.normal(-4, 0.3, 300),
            "generated": rng.normal(-3, 0.3, 300),
        },
        result,
    )
    fig = energy_panels([wide, narrow], "demo")
    rows = fig.axes[:2]
    insets = [[c for c in ax.child_axes if c.get_gid() == "energy-zoom"] for ax in rows]
    assert [len(i) for i in insets] == [0, 1]
    lo, hi = insets[1][0].get_xlim()
    assert (
        -6.5 < lo and hi < -1.5
    )  # the inset spans the narrow run's own values, not the shared axis
    plt.close(fig)
    fig = energy_panels([narrow, narrow], "demo")  # runs on one scale: no inset
    assert not any(c.get_gid() == "energy-zoom" for ax in fig.axes for c in ax.child_axes)
    plt.close(fig)


def test_every_value_from_a_record_is_escaped_in_the_page(tmp_path):
    """Method names, protocols, settings and run ids reach the page only as escaped text."""
    from bench.core.io import write_json
    from bench.leaderboard.report import build_report

    evil = "<script>alert(1)</script>"
    out = tmp_path / "results"
    recs = [
        _record("r1-evil", evil, clean=0.9, pgd=0.3),
        _record("r2-evil", evil, seed=1, clean=0.8, pgd=0.4),
        {**_record("r3-x", "ce", dataset=evil, clean=0.7, pgd=0.1), "message": evil},
        _record("r4-x", "ce", protocol="<b>"),  # not a plain name: refused on load, never shown
    ]
    for rec in recs:
        write_json(out / "runs" / rec["run_id"] / "record.json", rec)
    rep = build_report(out, html=tmp_path / "page" / "index.html", reference=False)
    page = rep.html.read_text()
    assert "<script>alert" not in page and "<b>" not in page
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page and "protocol standard" in page
    assert "&lt;b&gt;" not in page and "r4-x" not in page  # tests/test_report_hostile.py: more
    assert page.count("<script>") == 1  # the page's own check


def test_the_brief_view_shows_groups_of_seeds_beside_single_runs(tmp_path):
    """`bench compare --group seeds` folds two pgd-at seeds into one row ("0,1") beside a ce run of
    one seed; the brief view used to fail on the group's seeds and on a KID's own ± column."""
    from bench.core.io import write_json
    from bench.leaderboard.compare import compare

    out = tmp_path / "results"
    recs = [
        _record("r1-ce", "ce", clean=0.9, pgd=0.0),
        _record("r2-pgd", "pgd-at", seed=0, clean=0.8, pgd=0.4),
        _record("r3-pgd", "pgd-at", seed=1, clean=0.82, pgd=0.44),
    ]
    for i, rec in enumerate(recs):  # a KID stores its own std: its ± column before grouping
        kid = {"kid_mean": 0.08 + i / 100, "kid_std": 0.003, "n_examples": 500}
        rec["evaluations"]["standard"]["kid"] = kid
        write_json(out / "runs" / rec["run_id"] / "record.json", rec)
    lines = compare(out, group="seeds").splitlines()
    header = [c.strip() for c in lines[0].strip("|").split("|")]
    assert {"run", "method", "seed", "seeds"} <= set(header)
    (pgd,) = [line for line in lines if "pgd-at" in line]
    assert "| 2 runs " in pgd and "| 0,1 " in pgd and "81 ± " in pgd and "0.095 ± " in pgd
