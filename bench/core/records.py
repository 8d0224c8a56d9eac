"""Run records (``<run>/record.json``, docs/records.md): :class:`RunRecord` is the file's one writer
(atomic, under the run directory's lock, keeping what other processes' evaluations saved). Reading
a record: :mod:`bench.core.record_reading`; run directories: :mod:`bench.core.run_dirs`."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bench.core.environment import environment
from bench.core.io import read_json, remove_litter, write_json
from bench.core.record_reading import SCHEMA, check_name, load_record
from bench.core.run_dirs import dir_lock


def now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S%z")


def _newer(a: dict[str, Any], b: dict[str, Any]) -> dict[str, Any]:
    """Of two results of one metric, the later evaluated (``b`` on a tie)."""
    return a if str(a.get("evaluated_at", "")) > str(b.get("evaluated_at", "")) else b


class RunRecord:
    """A run's ``record.json``: read it, change it, save it; the only code that writes the file."""

    def __init__(self, run_dir: Path, data: dict[str, Any]):
        self.run_dir = Path(run_dir)
        self.path = self.run_dir / "record.json"
        self.data = data

    def __getitem__(self, key: str) -> Any:
        return self.data[key]

    def get(self, key: str, default: Any = None) -> Any:
        return self.data.get(key, default)

    @classmethod
    def create(
        cls,
        run_dir: Path,
        run_id: str,
        cfg,
        device,
        data_summary: dict,
        changes: dict[str, Any] | None = None,
        save: bool = True,
        plugins: list[dict[str, Any]] | None = None,
        variant: dict[str, Any] | None = None,
    ) -> RunRecord:
        """``plugins``: each package besides trilemma-bench that provided the method or a metric;
        ``variant``: where the method's variant of the preset departs from the shared preset."""
        from bench.core.device import training_precision  # torch: only where a record is made

        env = {**environment(device), "plugins": list(plugins or [])}
        # the flags training sets; each evaluation result records its own
        env["precision"] = training_precision(cfg.train).as_dict()
        rec = cls(
            run_dir,
            {
                "schema": SCHEMA,
                "run_id": run_id,
                "status": "running",
                "method": cfg.method,
                "dataset": cfg.data.dataset,
                "arch": cfg.model.arch,
                "preset": cfg.preset,
                "seed": cfg.seed,
                "config": cfg.to_dict(),
                "config_digest": cfg.digest(),
                "changes": None if changes is None else dict(changes),
                "preset_variant": None if variant is None else dict(variant),
                "environment": env,
                "data": data_summary,
                "created_at": now(),
                "updated_at": now(),
                "finished_at": None,
                "message": None,
                "timings": {},
                "training": {"history": [], "validation": [], "rollbacks": [], "resumes": []},
                "evaluations": {},
                "artifacts": {},
            },
        )
        if save:
            rec.save()
        return rec

    @classmethod
    def load(cls, run_dir: Path) -> RunRecord:
        return cls(run_dir, load_record(run_dir))

    def save(self) -> None:
        """Write atomically under a lock on the run directory. What the evaluation layer owns
        (results, their artifacts, skipped metrics, evaluation time) and another process saved since
        this copy was read is kept: of two results of one metric, the later evaluated wins."""
        with dir_lock(self.run_dir):
            self._write_locked()

    @classmethod
    def update(cls, run_dir: Path, change: Callable[[RunRecord], None]) -> RunRecord:
        """Read-modify-write for a process that does not own the run (e.g. `bench eval` while it
        trains): the record is read, changed and written under the lock, so nothing is put back stale."""
        with dir_lock(Path(run_dir)):
            rec = cls.load(run_dir)
            change(rec)
            rec._write_locked(keep_disk=False)  # read under this lock: nothing on disk is newer
        return rec

    def _write_locked(self, keep_disk: bool = True) -> None:
        if keep_disk and self.path.is_file():
            try:
                disk = read_json(self.path)
            except (OSError, ValueError):
                disk = {}
            if isinstance(disk, dict):
                self._keep_evaluation_parts(disk)
        self.data["updated_at"] = now()
        write_json(self.path, self.data)

    def _keep_evaluation_parts(self, disk: dict[str, Any]) -> None:
        """Results, their figures, skipped metrics, evaluation time and the plugins that produced them."""
        mine = self.data.setdefault("evaluations", {})
        for protocol, results in (disk.get("evaluations") or {}).items():
            if not isinstance(results, dict):
                continue
            slot = mine.setdefault(protocol, {})
            for metric, res in results.items():
                if isinstance(res, dict):
                    old = slot.get(metric)
                    slot[metric] = _newer(res, old) if isinstance(old, dict) else res
        arts = self.data.setdefault("artifacts", {})
        for key, rel in (disk.get("artifacts") or {}).items():
            if key.count("/") >= 2:  # <protocol>/<metric>/<name>: an evaluation's figure
                arts.setdefault(key, rel)
        for protocol, why in (disk.get("evaluation_skipped") or {}).items():
            self.data.setdefault("evaluation_skipped", {}).setdefault(protocol, why)
        self.add_plugins(
            [p for p in (disk.get("environment") or {}).get("plugins") or () if isinstance(p, dict)]
        )
        done = (disk.get("timings") or {}).get("eval_seconds")
        if isinstance(done, (int, float)):
            t = self.data.setdefault("timings", {})
            t["eval_seconds"] = max(t.get("eval_seconds", 0), done)

    def set_status(self, status: str, message: str | None = None, save: bool = True) -> None:
        self.data["status"] = status
        self.data["message"] = message
        if status == "complete":
            self.data["finished_at"] = now()
        if save:
            self.save()

    def update_training(
        self,
        artifacts: dict[str, str] | None = None,
        train_seconds: float | None = None,
        save: bool = True,
        **training: Any,
    ) -> None:
        """Training progress (steps, history, validation, rollbacks, ...), its time and artifacts."""
        self.data["training"].update(training)
        if train_seconds is not None:
            self.data["timings"]["train_seconds"] = round(train_seconds, 3)
        self.data["artifacts"].update(artifacts or {})
        if save:
            self.save()

    def add_resume(
        self,
        at_step: int,
        overrides: dict[str, dict[str, Any]] | None = None,
        note: str | None = None,
    ) -> None:
        """One entry per resume: the step it continued from, and the settings it changed
        (``{"optim.lr": {"from": 0.1, "to": 0.01}}``) or why it restarted (``note``)."""
        entry: dict[str, Any] = {"at_step": at_step, "time": now()}
        if overrides:
            entry["overrides"] = overrides
        if note:
            entry["note"] = note
        self.data["training"].setdefault("resumes", []).append(entry)

    def add_plugins(self, plugins: list[dict[str, Any]]) -> None:
        """List each plugin (kind, name, package, version, module) once in ``environment.plugins``."""
        have = self.data.setdefault("environment", {}).setdefault("plugins", [])
        for p in plugins:
            if not any(
                h.get("kind") == p.get("kind") and h.get("name") == p.get("name") for h in have
            ):
                have.append(p)

    def remove_litter(self) -> list[Path]:
        """Delete temporary files left by writes that a kill interrupted: the record's (under the
        directory lock its writers hold) and the trainer's. Call it while holding the run's lock."""
        with dir_lock(self.run_dir):
            found = remove_litter(self.run_dir, "record.json")
        # written only by the trainer, which holds the run's lock (`bench eval` writes elsewhere in samples/)
        found += remove_litter(self.run_dir / "checkpoints")
        return found + remove_litter(self.run_dir / "samples", "buffer-*")

    def merge_evaluation(
        self,
        protocol: str,
        results: dict[str, dict[str, Any]],
        skipped: dict[str, str] | None = None,
        save: bool = True,
    ) -> None:
        """Add ``results`` (metric -> result) under ``evaluations[protocol]``, keeping the other metrics'
        earlier results; their artifacts go into ``artifacts`` as ``<protocol>/<metric>/<name>``.
        A key that is not a plain name is refused: a record holding one is unreadable."""
        for key in [protocol, *results, *(skipped or ())]:
            check_name(key, f"cannot store in run {self.data.get('run_id')}: the key")
        self.data.setdefault("evaluations", {}).setdefault(protocol, {}).update(results)
        self.add_plugins(
            [
                {"kind": "metric", "name": res.get("metric") or metric, **res["provider"]}
                for metric, res in results.items()
                if isinstance(res.get("provider"), dict)
            ]
            + [
                {"kind": "protocol", "name": protocol, **res["protocol_provider"]}
                for res in results.values()
                if isinstance(res.get("protocol_provider"), dict)
            ]
        )
        arts = self.data.setdefault("artifacts", {})
        for metric, res in results.items():
            for name, rel in (res.get("artifacts") or {}).items():
                arts[f"{protocol}/{metric}/{name}"] = rel
        if skipped:
            self.data.setdefault("evaluation_skipped", {})[protocol] = dict(skipped)
        t = self.data.setdefault("timings", {})
        t["eval_seconds"] = round(
            t.get("eval_seconds", 0) + sum(r.get("seconds", 0) for r in results.values()), 3
        )
        if save:
            self.save()
