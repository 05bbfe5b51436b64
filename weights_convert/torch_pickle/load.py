"""The entry point: open the file, tell its format, read it, and resolve tensors to numpy arrays."""

from __future__ import annotations

import io
import os
from typing import IO

from .errors import CheckpointError, _reading
from .legacy_format import LEGACY_MAGIC_NUMBER, _load_legacy
from .limits import _BUDGET_ALLOWANCE, _BUDGET_BYTES_PER_FILE_BYTE, _Budget, open_regular_file
from .tensors import _Resolver
from .unpickler import _unpickle
from .zip_format import _load_zip


def load_torch_checkpoint(path: str | os.PathLike) -> object:
    """Return the checkpoint's object tree with every tensor replaced by a C-contiguous numpy array
    (dtype float32/float64/float16/int64/int32/int16/int8/uint8/bool; bfloat16 widened to float32),
    dicts/OrderedDicts as dict (order kept), lists/tuples as is, ints/floats/strings/bytes as is.

    Both ``torch.save`` formats are read (zip and legacy).  Only an allowlist
    of globals is accepted; anything else raises
    :class:`UnsafeCheckpointError`.  Every other problem with the file
    (including a path that is not a regular file, and every limit in
    :mod:`.limits`) raises :class:`CheckpointError`.  Errors opening the
    file (e.g. ``FileNotFoundError``) propagate unchanged.
    """
    name = os.fspath(path)
    with open_regular_file(name) as file:
        file_size = os.fstat(file.fileno()).st_size
        budget = _Budget(name, _BUDGET_BYTES_PER_FILE_BYTE * file_size + _BUDGET_ALLOWANCE)
        if _detect_format(file, name) == "zip":
            tree, _roots = _load_zip(file, name, budget)
        else:
            tree, _roots = _load_legacy(file, name, file_size, budget)
    with _reading(name, "converting tensors to numpy arrays"):
        return _Resolver(name, budget).resolve(tree)


def _detect_format(file: IO[bytes], path: str) -> str:
    """Return ``"zip"`` or ``"legacy"``, or raise :class:`CheckpointError` saying what the file is."""
    head = file.read(512)
    file.seek(0)
    if not head:
        raise CheckpointError(f"{path}: the file is empty")
    if head.startswith(b"PK\x03\x04"):  # a zip local-file header, as torch itself checks
        return "zip"  # a damaged archive is reported when it is opened
    if _starts_with_legacy_magic(head, path):
        return "legacy"
    if len(head) >= 262 and head[257:262] == b"ustar":
        raise CheckpointError(
            f"{path}: this is a tar archive (the very old torch tar checkpoint format?); "
            "it is not supported, re-save it with a current torch"
        )
    raise CheckpointError(f"{path}: not a PyTorch checkpoint (neither a zip archive nor a legacy torch.save stream)")


def _starts_with_legacy_magic(head: bytes, path: str) -> bool:
    """True if ``head`` (the file's first bytes) opens with the pickled legacy magic number.

    That first pickle is a single int, a few dozen bytes at any pickle protocol.
    """
    try:
        magic, _ = _unpickle(io.BytesIO(head), path, "the first pickle")
    except Exception:  # anything at all, including refused globals: it is not our magic number
        return False
    return type(magic) is int and magic == LEGACY_MAGIC_NUMBER
