"""Storages and tensor views: what a checkpoint's persistent ids and tensors stand for.

``torch.save`` does not put tensor data inside the pickle.  Each tensor is
pickled as the call ``torch._utils._rebuild_tensor_v2(storage,
storage_offset, size, stride, requires_grad, hooks)``, and ``storage`` is a
*persistent id*: a small tuple that names a raw block of bytes kept next to
the pickle.  Several tensors may view one storage (a transposed tensor, or
tied weights), each with its own offset, size and stride.

The zip format's persistent ids are ``('storage', storage_type, key,
location, numel)``; the legacy format's add ``view_metadata``, which may
select a slice of the root storage.  :func:`_persistent_load` turns either
into a :class:`_StorageView` of a :class:`_RootStorage`, whose bytes are read
after unpickling (:mod:`.zip_format`, :mod:`.legacy_format`).
"""

from __future__ import annotations

import numpy as np

from ..messages import show
from .errors import _RESAVE_ADVICE, UnsafeCheckpointError, _Malformed


class _StorageType:
    """Stand-in for a torch typed-storage class such as ``torch.FloatStorage``.

    ``dtype`` is the element type as it lies in the file (byte order still
    to be chosen); bfloat16 is kept as raw ``uint16`` bits.
    """

    __slots__ = ("name", "dtype")

    def __init__(self, name: str, dtype: str) -> None:
        self.name = name
        self.dtype = np.dtype(dtype)

    def __repr__(self) -> str:
        return f"torch.{self.name}"


_STORAGE_TYPES: dict[str, _StorageType] = {
    name: _StorageType(name, dtype)
    for name, dtype in [
        ("FloatStorage", "f4"),
        ("DoubleStorage", "f8"),
        ("HalfStorage", "f2"),
        ("BFloat16Storage", "u2"),  # raw bits, widened to float32 at the end
        ("LongStorage", "i8"),
        ("IntStorage", "i4"),
        ("ShortStorage", "i2"),
        ("CharStorage", "i1"),
        ("ByteStorage", "u1"),
        ("BoolStorage", "u1"),  # one byte per value, turned into bool at the end
    ]
}


class _RootStorage:
    """One raw storage of the file: ``numel`` elements of ``storage_type``.

    ``data`` (a 1-D numpy array in the file's byte order) is filled in after
    unpickling, when the storage bytes are read.
    """

    __slots__ = ("key", "storage_type", "numel", "data")

    def __init__(self, key: str, storage_type: _StorageType, numel: int) -> None:
        self.key = key
        self.storage_type = storage_type
        self.numel = numel
        self.data: np.ndarray | None = None

    @property
    def nbytes(self) -> int:
        return self.numel * self.storage_type.dtype.itemsize


class _StorageView:
    """What a persistent id stands for: elements ``[start, start + numel)`` of a root storage.

    In the zip format the view is always the whole root storage; legacy
    files may carry ``view_metadata`` that selects a slice of it.
    """

    __slots__ = ("root", "start", "numel")

    def __init__(self, root: _RootStorage, start: int, numel: int) -> None:
        self.root = root
        self.start = start
        self.numel = numel


class _TensorRef:
    """A tensor still to be built: the arguments of ``_rebuild_tensor_v2``."""

    __slots__ = ("storage", "storage_offset", "size", "stride", "metadata")

    def __init__(self, storage: object, storage_offset: object, size: object, stride: object, metadata: object) -> None:
        self.storage = storage
        self.storage_offset = storage_offset
        self.size = size
        self.stride = stride
        self.metadata = metadata


def _is_count(value: object) -> bool:
    """True for a non-negative int (bools excluded)."""
    return type(value) is int and value >= 0


def _persistent_load(
    pid: object, storage_format: str | None, roots: dict[str, _RootStorage], path: str
) -> _StorageView:
    """Turn a ``('storage', ...)`` persistent id into a :class:`_StorageView`.

    ``storage_format`` (``"zip"``, ``"legacy"`` or ``None``) says which layout
    the id must have; ``roots`` collects the root storages by key.
    """
    if not (type(pid) is tuple and pid and pid[0] == "storage"):
        kind = pid[0] if type(pid) is tuple and pid else pid
        raise UnsafeCheckpointError(
            f"{path}: refusing to load: unsupported persistent id {show(kind)} "
            f"(only 'storage' is accepted; 'module' means a whole pickled nn.Module). {_RESAVE_ADVICE}"
        )
    if storage_format == "zip" and len(pid) == 5:
        _, storage_type, key, _location, numel = pid
        view_metadata = None
    elif storage_format == "legacy" and len(pid) == 6:
        _, storage_type, key, _location, numel, view_metadata = pid
    else:
        raise _Malformed(f"malformed storage persistent id {show(pid)}")
    root = _root_storage(roots, storage_type, key, numel)
    if view_metadata is None:
        return _StorageView(root, 0, root.numel)
    return _legacy_view(root, view_metadata)


def _root_storage(roots: dict[str, _RootStorage], storage_type: object, key: object, numel: object) -> _RootStorage:
    """Return the root storage ``key``, creating it on first sight and checking repeats agree."""
    if not isinstance(storage_type, _StorageType):
        raise _Malformed(f"storage type {show(storage_type)} is not a torch storage class")
    if type(key) is not str:
        raise _Malformed(f"storage key {show(key)} is not a string")
    if not _is_count(numel):
        raise _Malformed(f"storage {show(key)} has invalid element count {show(numel)}")
    root = roots.get(key)
    if root is None:
        root = roots[key] = _RootStorage(key, storage_type, numel)  # type: ignore[arg-type]
    elif root.storage_type is not storage_type or root.numel != numel:
        raise _Malformed(
            f"storage {show(key)} is described twice, as {root.numel} x {root.storage_type} "
            f"and as {numel} x {storage_type}"
        )
    return root


def _legacy_view(root: _RootStorage, view_metadata: object) -> _StorageView:
    """Legacy storage view ``(view_key, offset, numel)``: a slice of ``root``."""
    if not (type(view_metadata) is tuple and len(view_metadata) == 3):
        raise _Malformed(f"malformed storage view metadata {show(view_metadata)}")
    _view_key, offset, numel = view_metadata
    if not (_is_count(offset) and _is_count(numel) and offset + numel <= root.numel):
        raise _Malformed(
            f"storage view [{show(offset)}, +{show(numel)}) does not fit in storage "
            f"{show(root.key)} of {root.numel} elements"
        )
    return _StorageView(root, offset, numel)
