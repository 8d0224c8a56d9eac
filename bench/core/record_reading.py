"""Reading a run record (``<run>/record.json``, docs/records.md): records of older schema versions
are upgraded in memory, and one whose protocol or metric keys are not plain names is refused as
unreadable (they reach pages and terminals). Writing one: :mod:`bench.core.records`."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from bench.core.errors import BenchError
from bench.core.io import read_json

# 2: `changes` (settings that depart from the method's preset) stored when the run starts
SCHEMA = 2
NOT_IN_NAMES = frozenset("<>\"'&`\\")


def upgrade(rec: dict[str, Any]) -> dict[str, Any]:
    """A record of any older schema version as the current version reads it (in memory: the file
    changes only when the record is next saved, e.g. by `bench eval` or a resume)."""
    version = rec.get("schema", 1)
    if not isinstance(version, int) or version > SCHEMA:
        raise BenchError(
            f"record of run {rec.get('run_id')} has schema {version!r}, newer than this trilemma-bench "
            f"reads ({SCHEMA}); upgrade trilemma-bench to read it"
        )
    if version < 2:
        rec.setdefault("changes", None)  # not stored before version 2: `bench compare` works it out
    for key in ("evaluations", "artifacts", "timings", "training"):
        rec[key] = rec[key] if isinstance(rec.get(key), dict) else {}
    rec["schema"] = SCHEMA
    return rec


def run_config(rec: dict[str, Any]):
    """The run's resolved config (a RunConfig) from its record; one line if the record has none usable."""
    from bench.core.config import RunConfig, from_dict

    cfg = rec.get("config")
    if not isinstance(cfg, dict):
        raise BenchError(
            f"the record of run {rec.get('run_id')} holds no config, so the run cannot be resumed or "
            "evaluated; start a new run"
        )
    try:
        return from_dict(RunConfig, cfg)
    except BenchError as exc:
        raise BenchError(
            f"the config in the record of run {rec.get('run_id')} is not valid ({exc}); start a new run"
        )


def load_record(run_dir: Path) -> dict[str, Any]:
    path = Path(run_dir) / "record.json"
    try:
        rec = read_json(path)
    except (OSError, ValueError) as exc:
        raise BenchError(
            f"record {path} is unreadable ({type(exc).__name__}); it may have been edited by hand"
        )
    if not isinstance(rec, dict) or "run_id" not in rec:
        raise BenchError(f"{path} is not a trilemma-bench run record")
    return _check_names(upgrade(rec), path)


def check_name(key: str, what: str) -> None:
    """Protocol and metric keys reach pages and terminals as names: one line unless ``key`` is a
    plain name (no markup characters, quotes or control characters; at most 500 characters)."""
    if not (0 < len(key) <= 500 and key.isprintable() and key == key.strip()) or (
        NOT_IN_NAMES & set(key)
    ):
        raise BenchError(
            f"{what} {key[:60]!r} is not a plain name (no <>\"'&`\\ or control characters)"
        )


def _check_names(rec: dict[str, Any], path: Path) -> dict[str, Any]:
    """A record whose protocol or metric key is not a plain name is unreadable."""
    for section in (rec["evaluations"], rec.get("evaluation_skipped")):
        for protocol, results in section.items() if isinstance(section, dict) else ():
            for key in [protocol, *(results if isinstance(results, dict) else ())]:
                try:
                    check_name(key, "its protocol or metric key")
                except BenchError as exc:
                    raise BenchError(
                        f"record {path} is unreadable: {exc}; it may have been edited by hand"
                    ) from None
    return rec
