"""The legacy container: ``_use_new_zipfile_serialization=False``, and most files from before torch 1.6.

Several pickles one after another in one stream: the magic number
``0x1950a86a20f9469cfc6c``, the protocol version ``1001``, a ``sys_info``
dict, the main pickle (persistent ids ``('storage', storage_type, root_key,
location, numel, view_metadata)``), a pickled list of storage keys, and
then, for each key in that list, the storage: an 8-byte little-endian
element count and the raw bytes.  Legacy storages are always little-endian,
whatever machine wrote them.
"""

from __future__ import annotations

import struct
from typing import IO, Any

import numpy as np

from ..messages import show
from .errors import CheckpointError, _reading
from .limits import MAX_PICKLE_BYTES, _Budget, _LimitedReader
from .storages import _RootStorage
from .unpickler import _unpickle

LEGACY_MAGIC_NUMBER = 0x1950A86A20F9469CFC6C
LEGACY_PROTOCOL_VERSION = 1001


def _load_legacy(file: IO[bytes], path: str, file_size: int, budget: _Budget) -> tuple[object, dict[str, _RootStorage]]:
    """Read the legacy stream: magic, version, sys_info, main pickle, key list, storages."""

    def next_pickle(what: str, storage_format: str | None = None) -> tuple[Any, dict[str, _RootStorage]]:
        reader = _LimitedReader(file, min(MAX_PICKLE_BYTES, file_size - file.tell()))
        return _unpickle(reader, path, what, storage_format)  # type: ignore[arg-type]

    magic, _ = next_pickle("the legacy magic number")
    version, _ = next_pickle("the legacy protocol version")
    sys_info, _ = next_pickle("the legacy sys_info")
    if type(magic) is not int or magic != LEGACY_MAGIC_NUMBER:
        raise CheckpointError(f"{path}: bad legacy magic number")
    if type(version) is not int or version != LEGACY_PROTOCOL_VERSION:
        raise CheckpointError(f"{path}: unsupported legacy protocol version {show(version)}")
    if not isinstance(sys_info, dict):
        raise CheckpointError(f"{path}: legacy sys_info is not a dict")

    tree, roots = next_pickle("the legacy main pickle", storage_format="legacy")
    keys, _ = next_pickle("the legacy storage key list")
    _check_legacy_keys(keys, roots, path)
    for key in keys:
        roots[key].data = _read_legacy_storage(file, roots[key], path, file_size, budget)
    return tree, roots


def _check_legacy_keys(keys: object, roots: dict[str, _RootStorage], path: str) -> None:
    """The key list must name each storage of the main pickle exactly once."""
    if not (type(keys) is list and all(type(k) is str for k in keys)):
        raise CheckpointError(f"{path}: legacy storage key list is malformed")
    if len(set(keys)) != len(keys) or set(keys) != set(roots):
        missing = sorted(set(roots) - set(keys))[:5]
        unknown = sorted(set(keys) - set(roots))[:5]
        raise CheckpointError(
            f"{path}: legacy storage key list does not match the pickle "
            f"(missing: {show(missing)}, unknown: {show(unknown)}, duplicates: {len(keys) - len(set(keys))})"
        )


def _read_legacy_storage(
    file: IO[bytes], root: _RootStorage, path: str, file_size: int, budget: _Budget
) -> np.ndarray:
    """Read one legacy storage: int64 little-endian element count, then the little-endian elements."""
    size_field = _read_exactly(file, 8, path, file_size, f"the size of storage {show(root.key)}")
    (count,) = struct.unpack("<q", size_field)
    if count != root.numel:
        raise CheckpointError(
            f"{path}: storage {show(root.key)} has {count} elements in the data section, "
            f"but the pickle says {root.numel}"
        )
    budget.charge(root.nbytes, f"reading storage {show(root.key)}")
    raw = _read_exactly(file, root.nbytes, path, file_size, f"storage {show(root.key)}")
    return np.frombuffer(raw, dtype=root.storage_type.dtype.newbyteorder("<"))


def _read_exactly(file: IO[bytes], nbytes: int, path: str, file_size: int, what: str) -> bytes:
    """Read ``nbytes`` bytes, or raise :class:`CheckpointError` (before reading) if the file is shorter."""
    with _reading(path, f"reading {what}"):
        if nbytes > file_size - file.tell():
            raise CheckpointError(f"{path}: file ends inside {what} (truncated?)")
        data = file.read(nbytes)
    if len(data) != nbytes:
        raise CheckpointError(f"{path}: file ends inside {what} (truncated?)")
    return data
