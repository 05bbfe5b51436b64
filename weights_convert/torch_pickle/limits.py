"""Bounds on the time and memory one file can make the reader spend.

Beyond refusing code, the reader bounds what a hostile file can cost:

* only regular files are opened (a named pipe would block forever):
  :func:`open_regular_file`;
* a pickle may span at most :data:`MAX_PICKLE_BYTES` and run at most
  :data:`MAX_PICKLE_OPS` opcodes (each opcode adds at most one reference,
  so this bounds the objects built), integers have at most
  :data:`MAX_INT_BITS` bits, and the object tree is at most
  :data:`MAX_DEPTH` containers deep;
* every allocation of file-declared size (``data.pkl``, each storage, each
  array built) is charged to a :class:`_Budget` *before* it is made, and
  zip members are read only up to their declared size; a pickle is read
  through a :class:`_LimitedReader`;
* a view that repeats elements (stride 0, overlapping strides) may not
  expand beyond :data:`MAX_EXPANDED_ELEMENTS`, twice the largest tensor of
  any real ShuffleNet (the V2 x2.0 classifier, 2048 x 1000).
"""

from __future__ import annotations

from typing import IO

from npshuffle.safetensors_file import open_regular_file as _open_regular_file

from ..messages import show
from .errors import CheckpointError

_MAX_NDIM = 64  # numpy's limit on the number of dimensions

# Limits on what one file may make the reader do.  A torchvision V2 x2.0
# state dict (the largest real ShuffleNet) is a 45 KB pickle of ~12,000
# opcodes, nested three levels deep, with 30 MB of storages.
MAX_PICKLE_BYTES = 16 * 2**20
MAX_PICKLE_OPS = 500_000
MAX_LINE_BYTES = 2**16  # the argument of a text opcode (pickle protocol 0)
MAX_INT_BITS = 128  # the legacy magic number has 77
MAX_DEPTH = 32
MAX_EXPANDED_ELEMENTS = 2**22

# The memory budget: storages cost about the file's size and the arrays
# built about as much again (twice that for bfloat16, widened to float32).
# The allowance covers small files with compressed storages or shared views.
_BUDGET_BYTES_PER_FILE_BYTE = 3
_BUDGET_ALLOWANCE = 256 * 2**20


class _Budget:
    """The bytes the loader may still allocate for one file.

    Every allocation whose size the file declares (``data.pkl``, a storage,
    an array to build) is charged here *before* it is made.
    """

    def __init__(self, path: str, limit: int) -> None:
        self.path = path
        self.limit = limit
        self.left = limit

    def charge(self, nbytes: int, what: str) -> None:
        if nbytes > self.left:
            raise CheckpointError(
                f"{self.path}: {what} would need {show(nbytes)} bytes, more than the {self.limit:,} bytes "
                "a checkpoint of this size may use (a storage or view far larger than the file?)"
            )
        self.left -= nbytes


class _LimitedReader:
    """The next ``limit`` bytes of ``file``, for :func:`pickletools.genops`.

    A pickle opcode asks to read as many bytes as the file declares (up to
    2**63).  A real file object allocates that much before reading; this
    reader never asks for more than is left, and reads lines of at most
    :data:`MAX_LINE_BYTES`.
    """

    def __init__(self, file: IO[bytes], limit: int) -> None:
        self.file = file
        self.left = limit

    def read(self, n: int = -1) -> bytes:
        data = self.file.read(self.left if n < 0 else min(n, self.left))
        self.left -= len(data)
        return data

    def readline(self) -> bytes:
        data = self.file.readline(min(self.left, MAX_LINE_BYTES))
        self.left -= len(data)
        return data


def open_regular_file(path: str) -> IO[bytes]:
    """``path`` opened for binary reading, refused with :class:`CheckpointError` unless it is a
    regular file (``npshuffle.safetensors_file.open_regular_file`` says how)."""
    return _open_regular_file(path, CheckpointError)
