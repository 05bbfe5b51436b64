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
import subprocess
import sys
import threading
from pathlib import Path


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


# the folder holding the installed npshuffle, kernels and weights_convert packages
PACKAGE_ROOT = str(Path(__file__).resolve().parent.parent)


def start_python(code: str, **popen_kwargs) -> subprocess.Popen:
    """A Python child running ``code`` with *this* installation of npshuffle first on its path (not
    whatever ``npshuffle`` or ``kernels`` folder the current directory holds), which exits with this
    process (see :func:`exit_with_parent`). ``popen_kwargs`` go to Popen (stdout, stderr, env...)."""
    prologue = (f"import sys; sys.path.insert(0, {PACKAGE_ROOT!r})\n"
                "from npshuffle.children import exit_with_parent; exit_with_parent()\n")
    return subprocess.Popen([sys.executable, "-c", prologue + code], stdin=subprocess.PIPE, **popen_kwargs)


def stop(proc: subprocess.Popen) -> None:
    """Kill ``proc`` if it still runs, reap it and close the pipe it watches."""
    if proc.poll() is None:
        proc.kill()
    proc.wait()
    if proc.stdin:
        proc.stdin.close()
