"""Child processes that end with their parent.

npshuffle starts helpers that compile the Numba kernels into the cache (``--device auto``'s
background compile, the compile helper of a cold first run). None may outlive the command that
started it, even one killed with SIGKILL, which runs no clean-up. So the parent gives each child a
pipe as its standard input and never writes to it; the child watches that pipe from a thread and
exits when it reaches end of file, which happens exactly when every copy of the parent's end is
closed: when the parent exits, however it exits.
"""

from __future__ import annotations

import os
import threading


def exit_with_parent() -> None:
    """In a child started with ``stdin=subprocess.PIPE``: exit as soon as the parent is gone."""
    fd = os.dup(0)

    def watch() -> None:
        try:  # (os.read, not sys.stdin: a daemon thread blocked in a buffered read breaks interpreter exit)
            while os.read(fd, 1024):
                pass
        except OSError:
            pass
        os._exit(1)

    threading.Thread(target=watch, name="exit-with-parent", daemon=True).start()
