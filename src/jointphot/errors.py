"""The exceptions users see: a clear message, no traceback (the CLI prints it and exits non-zero)."""
import signal


class JointphotError(Exception):
    """Bad input or a failed external step.  The message names the file, key or tile concerned."""


class Interrupted(BaseException):
    """`jointphot run` got SIGTERM / SIGINT / SIGHUP (a BaseException: no tile catches it as a failure)."""

    def __init__(self, signum: int):
        self.signum = signum
        try:
            name = signal.Signals(signum).name
        except ValueError:
            name = f"signal {signum}"
        super().__init__(f"interrupted by {name}")
        self.signame = name
