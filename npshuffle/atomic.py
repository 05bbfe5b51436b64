"""Writing a file so that it is either complete or not there: never half-written.

The data go to a temporary file in the target's folder, which is renamed over the target only
once fully written (a rename within one file system is atomic). An error, a full disk, Ctrl-C or
(through the CLI, which turns SIGTERM into an exception) ``kill PID`` mid-write leaves the previous
file at the target untouched and no temporary file behind. SIGKILL cannot be caught: it also
leaves the target untouched, but may leave the hidden ``.NAME.*.tmp`` beside it.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Callable
from typing import BinaryIO


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def write_atomically(path: str | os.PathLike, write: Callable[[BinaryIO], None]) -> None:
    """Call ``write(f)`` on a temporary binary file beside ``path``, then rename it to ``path``.

    The file gets the permissions a plain ``open(path, "wb")`` would give it (``mkstemp``'s own
    are owner-only). Any exception, KeyboardInterrupt included, removes the temporary file and
    propagates; ``path`` is then as it was.
    """
    path = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(dir=folder, prefix="." + os.path.basename(path)[:40] + ".", suffix=".tmp")
    try:
        os.chmod(tmp, 0o666 & ~_umask())
        with os.fdopen(fd, "wb") as f:
            write(f)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
