"""The run-record fields a run writes that :class:`~bench.core.records.RunRecord` has no method for
yet (docs/records.md): each is one named change, so the runner never writes ``record.data``."""

from __future__ import annotations

from typing import Any

from bench.core.config import RunConfig
from bench.core.records import RunRecord
from bench.run.resolve import CHOSEN, Resolved, changes_of


def set_resolution(record: RunRecord, resolved: Resolved) -> None:
    """The run's resolved settings: its config, changes, preset variant and the sources of its
    values (the plugins go with the environment: ``RunRecord.add_plugins``)."""
    record.data.update(
        config=resolved.config.to_dict(),
        changes=resolved.changes,
        preset_variant=resolved.preset_variant,
        sources=dict(resolved.sources),
    )


def set_resumed_config(record: RunRecord, cfg: RunConfig, overrides: dict[str, Any]) -> None:
    """A resume's ``--set`` changes: the config and its changes from the preset as they are now
    (None when the preset no longer describes it); the preset variant stays the one the run began with."""
    try:
        changes = changes_of(cfg.to_dict())
    except Exception:  # `bench compare` then shows "?"
        changes = None
    record.data.update(config=cfg.to_dict(), changes=changes)
    if isinstance(record.get("sources"), dict):
        record.data["sources"].update(dict.fromkeys(overrides, CHOSEN))


def set_distributed(record: RunRecord, **info: Any) -> None:
    """Data-parallel facts: world size, backend, batches; ``ranks_in_sync`` after training."""
    record.data.setdefault("distributed", {}).update(info)


def set_evaluated_checkpoint(record: RunRecord, info: dict[str, Any]) -> None:
    """Which weights the end-of-run evaluation took: checkpoint, step, EMA, a note."""
    record.data["evaluated_checkpoint"] = info


def set_throughput(record: RunRecord, images_per_second: float) -> None:
    """All ranks' training images per second, as the history's ``images_per_s``."""
    record.data["timings"]["images_per_second"] = images_per_second
