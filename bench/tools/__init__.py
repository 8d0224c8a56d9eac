"""The annex the library never imports: sweeps, the doctor, perf benchmarks and the model zoo
(docs/architecture.md)."""
