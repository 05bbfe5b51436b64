"""Why a path named as an input cannot be read as a file, found before anything opens it."""

from __future__ import annotations

import os


def input_file_problem(path: str | os.PathLike) -> str | None:
    """Why ``path`` cannot be read as an input file, or None: missing, a link to nothing (its
    target gone, or links in a loop), a folder, or a pipe or device (opening a pipe waits for a
    writer, forever if none comes; a device may never end)."""
    if not os.path.lexists(path):
        return "no such file"
    if not os.path.exists(path):
        return "a link to nothing (its target is gone, or the links loop)"
    if os.path.isdir(path):
        return "a folder, not a file"
    if not os.path.isfile(path):
        return "not a regular file (a pipe or a device)"
    return None
