"""Read PyTorch checkpoints (``.pth``, ``.pt``, ``.pth.tar``) safely, without torch.

:func:`load_torch_checkpoint` returns a checkpoint's object tree (dicts,
lists, tuples, numbers, strings) with every tensor as a numpy array.  Both
``torch.save`` formats are read: the zip archive (the default since torch
1.6) and the legacy stream of pickles.  The pickle inside is interpreted as
data by our own restricted unpickler: nothing from the file is imported or
executed, any Python global outside a short allowlist is refused with
:class:`UnsafeCheckpointError`, and every other problem with the file is a
:class:`CheckpointError` with a one-line message.  The time and memory a
hostile file can make the reader spend are bounded.

The files, in the order a load passes through them:

=================  =========================================================
``load.py``        the entry point: open, detect the format, read, resolve
``limits.py``      bounds on a file: size and opcode limits, the memory
                   budget, bounded reading, regular files only
``zip_format.py``  the zip container: ``data.pkl``, ``data/<key>``, byte order
``legacy_format.py``  the legacy stream: magic, pickles, raw storages
``unpickler.py``   the restricted opcode interpreter (why not ``pickle``)
``allowlist.py``   the globals a pickle may name, and our stand-ins for them
``storages.py``    storages, storage views, persistent ids, tensors to build
``tensors.py``     checking tensor geometry and building the numpy arrays
``errors.py``      :class:`CheckpointError` and friends
=================  =========================================================
"""

from __future__ import annotations

from .allowlist import _ALLOWED_GLOBALS as _ALLOWED_GLOBALS  # tests check every stand-in in it
from .errors import CheckpointError, UnsafeCheckpointError
from .legacy_format import LEGACY_MAGIC_NUMBER as LEGACY_MAGIC_NUMBER
from .legacy_format import LEGACY_PROTOCOL_VERSION as LEGACY_PROTOCOL_VERSION
from .limits import MAX_DEPTH as MAX_DEPTH
from .limits import MAX_EXPANDED_ELEMENTS as MAX_EXPANDED_ELEMENTS
from .limits import MAX_INT_BITS as MAX_INT_BITS
from .limits import MAX_LINE_BYTES as MAX_LINE_BYTES
from .limits import MAX_PICKLE_BYTES as MAX_PICKLE_BYTES
from .limits import MAX_PICKLE_OPS as MAX_PICKLE_OPS
from .limits import open_regular_file
from .load import load_torch_checkpoint

__all__ = ["CheckpointError", "UnsafeCheckpointError", "load_torch_checkpoint", "open_regular_file"]
