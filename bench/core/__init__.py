"""The core layer: the typed config schema, the registry, errors, atomic I/O, the device, signals
and the run record; it imports nothing above it (docs/architecture.md)."""
