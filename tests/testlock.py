"""Set-up that writes a shared place (the image build, the Nextflow download, the example field) runs in one
test process at a time: `make test` runs two pytest-xdist workers (not a test module)."""
from __future__ import annotations

import contextlib
import fcntl
import os
import tempfile


@contextlib.contextmanager
def exclusive(name: str):
    """Hold the host-wide lock `name` (a file in the temporary directory) for the block."""
    with open(os.path.join(tempfile.gettempdir(), f"jointphot-tests-{name}.lock"), "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        yield
