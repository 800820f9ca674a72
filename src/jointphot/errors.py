"""The one exception type users see: a clear message, no traceback (the CLI prints it and exits 1)."""


class JointphotError(Exception):
    """Bad input or a failed external step.  The message names the file, key or tile concerned."""
