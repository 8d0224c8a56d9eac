"""`bench doctor`: the checks of a machine before a long run. Each check lives here once, and the
tests run these same functions (tests/test_fast_path.py, test_compile_modes.py, test_host_sync.py,
test_doctor.py); what each check does and the order they run in: docs/scale.md, "Checking a
machine"."""
