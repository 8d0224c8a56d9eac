"""User-facing errors: each carries one line that names the fix; the CLI prints it and exits non-zero."""


class BenchError(Exception):
    """An error caused by input the user can fix. Its message is one line that says how."""

    exit_code = 2


class DivergenceError(BenchError):
    """Training diverged (non-finite or exploding values). The last good checkpoint is kept."""

    exit_code = 3


class InterruptedRun(BenchError):
    """The run was interrupted (Ctrl-C); a resumable checkpoint was written."""

    exit_code = 130


class DiskFull(BenchError):
    """A write failed because the disk (or the user's quota) is full. Nothing already saved is lost."""

    exit_code = 4
