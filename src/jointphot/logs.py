"""Console logging of the `jointphot` loggers (light: the CLI sets it up before any heavy import).

The console shows progress lines, warnings and errors (`jointphot: warning: tile 3: message`); the
per-tile log files (pipeline.run_tile) get every message."""
from __future__ import annotations

import logging
import sys
from typing import Optional

#: Progress lines and the run summary: the only INFO messages shown on the console by default.
progress_log = logging.getLogger("jointphot.run")

#: `extra` of messages for the log files only (the console has them in the progress line).
QUIET = {"console": False}

#: The tile this process is working on (prefix of console messages), None outside tiles.
_current_tile: Optional[int] = None


def current_tile() -> Optional[int]:
    return _current_tile


def set_current_tile(tile_id: Optional[int]) -> None:
    """The tile this process works on from now (None: none)."""
    global _current_tile
    _current_tile = tile_id


# --------------------------------------------------------------------------- logging
class ConsoleFormatter(logging.Formatter):
    """`jointphot: warning: tile 3: message`; progress lines as they are; -v adds logger names."""

    def __init__(self, verbose: bool = False):
        super().__init__()
        self.verbose = verbose

    def format(self, record):
        msg = record.getMessage()
        if record.name == progress_log.name:
            return msg
        tile = current_tile()
        if tile is not None and not msg.startswith(f"tile {tile}"):
            msg = f"tile {tile}: {msg}"
        if record.exc_info and self.verbose:
            msg += "\n" + self.formatException(record.exc_info)
        if record.levelno >= logging.ERROR:
            return f"jointphot: error: {msg}"
        if record.levelno >= logging.WARNING:
            return f"jointphot: warning: {msg}"
        if self.verbose and record.name != progress_log.name:
            return f"jointphot: {record.levelname.lower()}: {record.name}: {msg}"
        return msg


class _ConsoleFilter(logging.Filter):
    """Default console: progress lines, warnings and errors; --verbose: everything."""

    def __init__(self, verbose: bool):
        super().__init__()
        self.verbose = verbose

    def filter(self, record):
        if not getattr(record, "console", True) and not self.verbose:
            return False   # said by the progress line already
        return self.verbose or record.levelno >= logging.WARNING or record.name == progress_log.name


def setup_console_logging(verbose: bool = False, quiet: bool = False) -> None:
    """Console (stderr) logging of the `jointphot` loggers.

    default: per-tile progress lines, warnings, errors.  quiet: warnings and errors only.
    verbose: every message (DEBUG), with logger names and tracebacks.  The logger itself
    passes everything on, so the per-tile log files are complete whatever the console shows.
    """
    root = logging.getLogger("jointphot")
    for h in list(root.handlers):
        if getattr(h, "_jointphot_console", False):
            root.removeHandler(h)
    handler = logging.StreamHandler(sys.stderr)
    handler._jointphot_console = True
    handler.setLevel(logging.WARNING if quiet and not verbose else logging.DEBUG)
    handler.addFilter(_ConsoleFilter(verbose))
    handler.setFormatter(ConsoleFormatter(verbose))
    root.addHandler(handler)
    root.setLevel(logging.DEBUG)
    root.propagate = False
    root._jointphot_console_args = (verbose, quiet)


def console_args():
    return getattr(logging.getLogger("jointphot"), "_jointphot_console_args", None)
