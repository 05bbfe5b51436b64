"""The zip container, ``torch.save``'s default format since torch 1.6.

A zip archive with one top folder ``<prefix>/`` (usually the file name
without its extension) holding ``data.pkl`` (the pickle), ``data/<key>``
(one raw storage per key), ``byteorder`` (``little`` or ``big``; if absent,
``little``) and ``version``.  The persistent ids are
``('storage', storage_type, key, location, numel)``.

Every member is read only up to its declared size, which is checked and
charged to the memory budget first.
"""

from __future__ import annotations

import io
import zipfile
from typing import IO

import numpy as np

from .errors import CheckpointError, _reading
from .limits import MAX_PICKLE_BYTES, _Budget
from .storages import _RootStorage
from .unpickler import _unpickle


def _load_zip(file: IO[bytes], path: str, budget: _Budget) -> tuple[object, dict[str, _RootStorage]]:
    """Unpickle ``<prefix>/data.pkl`` and read every storage it names from ``<prefix>/data/``."""
    with _reading(path, "opening the zip archive"):
        archive = zipfile.ZipFile(file)
    with archive:
        prefix = _zip_prefix(archive, path)
        byteorder = _zip_byteorder(archive, prefix, path, budget)
        pickled = _read_zip_member(archive, f"{prefix}/data.pkl", path, budget, max_size=MAX_PICKLE_BYTES)
        tree, roots = _unpickle(io.BytesIO(pickled), path, f"{prefix}/data.pkl", storage_format="zip")
        for root in roots.values():
            root.data = _read_zip_storage(archive, prefix, root, byteorder, path, budget)
    return tree, roots


def _zip_prefix(archive: zipfile.ZipFile, path: str) -> str:
    """The archive's top folder (torch takes it from the first entry), which must hold ``data.pkl``."""
    names = archive.namelist()
    prefix = names[0].split("/", 1)[0] if names else ""
    if f"{prefix}/data.pkl" not in names:
        raise CheckpointError(f"{path}: zip archive has no {prefix or '<prefix>'}/data.pkl; not a torch.save file")
    return prefix


def _zip_byteorder(archive: zipfile.ZipFile, prefix: str, path: str, budget: _Budget) -> str:
    """``"<"`` or ``">"`` from the ``byteorder`` record; files without one are little-endian."""
    name = f"{prefix}/byteorder"
    if name not in archive.namelist():
        return "<"
    record = _read_zip_member(archive, name, path, budget, max_size=16)
    orders = {b"little": "<", b"big": ">"}
    if record not in orders:
        raise CheckpointError(f"{path}: unknown byte order {record!r} in {name}")
    return orders[record]


def _read_zip_member(
    archive: zipfile.ZipFile, name: str, path: str, budget: _Budget, max_size: int | None = None
) -> bytes:
    """Read one archive member: its declared size is checked and charged first, and no more is read."""
    try:
        info = archive.getinfo(name)
    except KeyError:
        raise CheckpointError(f"{path}: zip record {name} is missing") from None
    if max_size is not None and info.file_size > max_size:
        raise CheckpointError(f"{path}: zip record {name} declares {info.file_size:,} bytes (at most {max_size:,})")
    budget.charge(info.file_size, f"reading {name}")
    with _reading(path, f"reading {name}"), archive.open(info) as member:
        data = member.read(info.file_size)
    if len(data) != info.file_size:
        raise CheckpointError(f"{path}: zip record {name} is truncated")
    return data


def _read_zip_storage(
    archive: zipfile.ZipFile, prefix: str, root: _RootStorage, byteorder: str, path: str, budget: _Budget
) -> np.ndarray:
    """Read record ``<prefix>/data/<key>`` as a 1-D array, checking its size first."""
    name = f"{prefix}/data/{root.key}"
    try:
        declared = archive.getinfo(name).file_size
    except KeyError:
        raise CheckpointError(f"{path}: storage record {name} is missing") from None
    if declared != root.nbytes:
        raise CheckpointError(
            f"{path}: storage record {name} holds {declared} bytes, expected {root.nbytes} "
            f"({root.numel} x {root.storage_type})"
        )
    raw = _read_zip_member(archive, name, path, budget)
    return np.frombuffer(raw, dtype=root.storage_type.dtype.newbyteorder(byteorder))
