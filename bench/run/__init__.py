"""The application layer: resolve a run, train it, evaluate it, load saved runs (docs/architecture.md)."""
