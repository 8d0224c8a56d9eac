"""`bench sweep SPEC` and `bench sweep-status DIR` as library functions (the CLI only parses flags).

:func:`submit_sweep` checks everything before it writes or submits anything (docs/scale.md says
what), then, holding the sweep directory's lock, plans what each cell needs (:func:`plan`) and
submits the cells that need a job.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from math import prod
from pathlib import Path
from typing import Any

from bench.core.errors import BenchError
from bench.tools.sweep import launch
from bench.tools.sweep.grid import expand, resolve_cells
from bench.tools.sweep.spec import load_spec, settings_lines
from bench.tools.sweep.state import STATUSES, CellStatus, SweepDir, statuses


# -- what a submission does with each cell ---------------------------------------------------
@dataclass
class Action:
    cell: CellStatus
    submit: bool
    what: str  # start | resume | retry | skip | give up
    note: str = ""


def plan(cells: list[CellStatus], retries: int) -> list[Action]:
    """Complete and in-progress cells are skipped, interrupted ones resumed, failed ones retried while
    they have failed at most ``retries`` times, new ones started."""
    actions = []
    for c in cells:
        failures = max(c.failures, 1)
        if c.status == "complete":
            actions.append(Action(c, False, "skip"))
        elif c.status == "running" or (c.status == "pending" and c.attempts):
            actions.append(Action(c, False, "skip", c.detail or "in progress"))
        elif c.status == "pending":
            actions.append(Action(c, True, "start"))
        elif c.status == "interrupted":
            actions.append(Action(c, True, "resume" if c.run_id else "start", c.detail))
        elif failures <= retries:
            actions.append(Action(c, True, "retry", f"retry {failures} of {retries}: {c.detail}"))
        else:
            why = f"failed {failures} time(s), retries: {retries}: {c.detail}"
            actions.append(Action(c, False, "give up", why))
    return actions


# -- tables ---------------------------------------------------------------------------------
def table(headers: list[str], rows: list[list[Any]]) -> str:
    """A Markdown table (pipes), columns padded to their widest cell."""
    text = [[str(h) for h in headers]] + [["" if v is None else str(v) for v in r] for r in rows]
    widths = [max(len(r[i]) for r in text) for i in range(len(headers))]
    lines = ["| " + " | ".join(v.ljust(w) for v, w in zip(r, widths)) + " |" for r in text]
    return "\n".join([lines[0], "|" + "|".join("-" * (w + 2) for w in widths) + "|", *lines[1:]])


def status_table(axes: list[str], cells: list[CellStatus]) -> str:
    rows = [
        [c.index, *(c.values.get(a, "") for a in axes), c.status]
        + [c.run_id or "-", c.job_id or "-", c.detail]
        for c in cells
    ]
    return table(["cell", *axes, "status", "run", "job", "detail"], rows)


def plan_table(axes: list[str], actions: list[Action]) -> str:
    """What a submission does with each cell, and its run (``new``: started by its job)."""
    rows = [
        [a.cell.index, *(a.cell.values.get(k, "") for k in axes), a.cell.status, a.what]
        + [a.cell.run_id or ("new" if a.submit else "-"), a.note]
        for a in actions
    ]
    return table(["cell", *axes, "status", "action", "run", "note"], rows)


def summary(cells: list[CellStatus]) -> str:
    counts = {s: sum(1 for c in cells if c.status == s) for s in STATUSES}
    return ", ".join(f"{n} {s}" for s, n in counts.items() if n) or "no cells"


def current_statuses(sweep: SweepDir) -> list[CellStatus]:
    """Each cell's status, asking SLURM (sacct) about the cells' SLURM jobs."""
    return statuses(sweep, launch.slurm_states)


def submit_sweep(
    spec_path: str | Path,
    launcher: str | None = None,
    dry_run: bool = False,
    out: str | Path = "results",
    directory: str | Path | None = None,
    echo: Callable[[str], None] = print,
    note: Callable[[str], None] = print,
) -> list[CellStatus]:
    """Expand the spec's grid and submit the cells that need a job; returns the cells' statuses
    afterwards (on the local launcher, once every job has ended). ``echo`` gets the tables,
    ``note`` the progress lines."""
    spec = load_spec(spec_path)
    launcher = launcher or spec.default_launcher
    settings = spec.settings(launcher)
    cells = expand(spec)
    cfgs = resolve_cells(spec, cells)  # every cell checked before anything is written or submitted
    out_path = Path(out).resolve()
    sweep = SweepDir(Path(directory).resolve() if directory else out_path / "sweeps" / spec.name)
    sweep.check(spec, out_path)
    axes = [k for k, _ in spec.axes]
    total = prod(len(v) for _, v in spec.axes)
    sizes = " x ".join(f"{len(v)} {k}" for k, v in spec.axes)
    sizes += f", {total - len(cells)} excluded" if total > len(cells) else ""
    local = launcher == "local"
    how = f"max_parallel {settings.max_parallel}" if local else f"partition {settings.partition}"
    echo(
        f"sweep {spec.name}: {len(cells)} cells ({sizes}) in {sweep.path}; launcher {launcher} ({how})"
    )
    if dry_run:
        new = [
            CellStatus(c.index, c.key, dict(c.values), "pending", "not submitted") for c in cells
        ]
        current = current_statuses(sweep) if sweep.exists() else new
        actions = plan(current, spec.retries)
        echo(plan_table(axes, actions))
        n = sum(a.submit for a in actions)
        if launcher == "slurm":
            echo(f"sbatch script submitit would submit for {n or len(cells)} cell(s):")
            echo(launch.sbatch_preview(sweep, spec.name, settings, n or len(cells)).rstrip())
        else:
            echo("local: " + ", ".join(settings_lines(settings)))
        echo(f"dry run: {n} cell(s) would be submitted; nothing was submitted or written")
        return current
    if not sweep.exists():
        sweep.create(spec, cells, cfgs, out_path)
    with sweep.submitting():
        current = current_statuses(sweep)
        actions = plan(current, spec.retries)
        echo(plan_table(axes, actions))
        todo = [(a.cell.index, cfgs[a.cell.index]) for a in actions if a.submit]
        if not todo:
            note("nothing to submit: " + summary(current))
        elif launcher == "slurm":
            launch.submit_slurm(sweep, spec.name, settings, todo, str(out_path), note)
        else:
            launch.run_local(sweep, settings, todo, str(out_path), note)
        after = current_statuses(sweep)
    if todo:
        echo(status_table(axes, after))
    gave_up = [a for a in actions if a.what == "give up"]
    if gave_up:
        raise BenchError(
            f"{len(gave_up)} cell(s) failed more than retries: {spec.retries} times and were not "
            f"submitted again (cell {', '.join(str(a.cell.index) for a in gave_up)}: "
            f"{gave_up[0].cell.detail}); fix the cause, then raise retries in {spec.path}"
        )
    unfinished = [c for c in after if c.status in ("failed", "interrupted")]
    if launcher == "local" and unfinished:
        raise BenchError(
            f"{len(unfinished)} of {len(after)} cells did not complete ({summary(after)}); run "
            f"`bench sweep {spec_path}` again to resume the interrupted and retry the failed ones"
        )
    if launcher == "slurm" and todo:
        note(f"follow it with: bench sweep-status {sweep.path}")
    return after


def status_report(directory: str | Path) -> str:
    """The table `bench sweep-status DIR` prints: each cell's status, run and job."""
    sweep = SweepDir(directory)
    cells = current_statuses(sweep)
    table = status_table(list(sweep.load().get("axes") or []), cells)
    return table + f"\n{len(cells)} cells: {summary(cells)}"


def sweep_runs(directory: str | Path) -> tuple[Path, list[str]]:
    """The results root of a sweep's runs and its cells' run ids (for `bench compare --sweep`)."""
    sweep = SweepDir(directory)
    return Path(sweep.load()["out"]), sweep.run_ids()
