"""Read PyTorch checkpoints (``.pth``, ``.pt``, ``.pth.tar``) safely, without torch.

How ``torch.save`` lays out a file
----------------------------------
``torch.save`` writes a Python *pickle* of your object (usually a dict of
tensors).  Tensor data are not put inside the pickle.  Instead each tensor
is pickled as the call ``torch._utils._rebuild_tensor_v2(storage,
storage_offset, size, stride, requires_grad, hooks)``, and ``storage`` is a
*persistent id*: a small tuple that names a raw block of bytes kept next to
the pickle.  Several tensors may view one storage (a transposed tensor, or
tied weights), each with its own offset, size and stride.  There are two
container formats:

1. **zip** (the default since torch 1.6).  A zip archive with one top folder
   ``<prefix>/`` (usually the file name without its extension) holding
   ``data.pkl`` (the pickle), ``data/<key>`` (one raw storage per key),
   ``byteorder`` (``little`` or ``big``; if absent, ``little``) and
   ``version``.  The persistent ids are
   ``('storage', storage_type, key, location, numel)``.

2. **legacy** (``_use_new_zipfile_serialization=False``, and most files
   from before torch 1.6).  Several pickles one after another in one stream:
   the magic number ``0x1950a86a20f9469cfc6c``, the protocol version
   ``1001``, a ``sys_info`` dict, the main pickle (persistent ids
   ``('storage', storage_type, root_key, location, numel, view_metadata)``),
   a pickled list of storage keys, and then, for each key in that list, the
   storage: an 8-byte little-endian element count and the raw bytes.  Legacy
   storages are always little-endian, whatever machine wrote them.

Why not just ``pickle.load``?
-----------------------------
A pickle is a small program: it may name *any* importable function (a
"global" such as ``os.system``) and call it with arguments from the file.
Loading an untrusted checkpoint with plain pickle can therefore run
arbitrary code.  This module unpickles with :class:`_SafeUnpickler`, whose
``find_class`` answers only a short allowlist of names and hands back *our
own* stand-ins for them (no torch import, no attribute lookup by a name
taken from the file).  Any other global stops loading with
:class:`UnsafeCheckpointError`.  Nothing from the file is ever executed; the
stand-ins only record their arguments, and every tensor is rebuilt later as
a numpy array after its offset, size and stride have been checked against
the storage length.

Two smaller guards keep a hostile file from exhausting memory: each pickle's
opcodes are first listed with :mod:`pickletools` (which runs nothing) to
reject forged memo indices, and the arrays built may not exceed a budget
proportional to the file size.  Every other failure (truncated file, bad
zip, malformed pickle) becomes a :class:`CheckpointError` naming the file.
"""

from __future__ import annotations

import _compat_pickle
import contextlib
import io
import os
import pickle
import pickletools
import struct
import zipfile
from collections.abc import Iterator
from typing import IO, Any

import numpy as np

__all__ = ["CheckpointError", "UnsafeCheckpointError", "load_torch_checkpoint"]

LEGACY_MAGIC_NUMBER = 0x1950A86A20F9469CFC6C
LEGACY_PROTOCOL_VERSION = 1001

_MAX_NDIM = 64  # numpy's limit on the number of dimensions

# Memory-bomb guard.  Tensors are views, so a tiny file can describe huge
# arrays (a stride-0 dimension, or thousands of tensors viewing one big
# storage).  Loading is refused once the arrays built would need more than
# this many bytes per byte of file, plus a fixed allowance.  Real
# checkpoints need about 1x (2x when bfloat16 is widened to float32).
_OUTPUT_BYTES_PER_FILE_BYTE = 8
_OUTPUT_BYTES_ALLOWANCE = 2**30

_RESAVE_ADVICE = (
    "This loader accepts only tensors, dicts, lists, tuples, numbers and strings. "
    "Re-save just the weights with `torch.save(model.state_dict(), path)`."
)


class CheckpointError(ValueError):
    """The file is not a readable PyTorch checkpoint; the message says which file and why."""


class UnsafeCheckpointError(CheckpointError):
    """The checkpoint asks for a Python global (code) outside the allowlist."""


# --------------------------------------------------------------------------
# Stand-ins for the few torch objects a checkpoint may name
# --------------------------------------------------------------------------


class _Sealed:
    """Base for our stand-in objects: a pickle may not overwrite their fields.

    The pickle ``BUILD`` opcode would otherwise write straight into an
    object's ``__dict__``, bypassing the checks done when it was created.
    """

    __slots__ = ()

    def __setstate__(self, state: object) -> None:
        raise TypeError(f"the pickle tries to set the state of a {type(self).__name__}")


class _StorageType(_Sealed):
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


class _RootStorage(_Sealed):
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


class _StorageView(_Sealed):
    """What a persistent id stands for: elements ``[start, start + numel)`` of a root storage.

    In the zip format the view is always the whole root storage; legacy
    files may carry ``view_metadata`` that selects a slice of it.
    """

    __slots__ = ("root", "start", "numel")

    def __init__(self, root: _RootStorage, start: int, numel: int) -> None:
        self.root = root
        self.start = start
        self.numel = numel


class _TensorRef(_Sealed):
    """A tensor still to be built: the arguments of ``_rebuild_tensor_v2``."""

    __slots__ = ("storage", "storage_offset", "size", "stride", "metadata")

    def __init__(self, storage: object, storage_offset: object, size: object, stride: object, metadata: object) -> None:
        self.storage = storage
        self.storage_offset = storage_offset
        self.size = size
        self.stride = stride
        self.metadata = metadata


class _OrderedDictStandIn(dict):
    """Stand-in for ``collections.OrderedDict``; becomes a plain dict at the end.

    ``state_dict()`` results carry a ``_metadata`` attribute that the pickle
    restores with ``BUILD``; a plain dict could not take it, so this class
    accepts that state and drops it.
    """

    def __setstate__(self, state: object) -> None:
        pass


def _rebuild_tensor_v2(
    storage: object,
    storage_offset: object,
    size: object,
    stride: object,
    requires_grad: object = False,
    backward_hooks: object = None,
    metadata: object = None,
) -> _TensorRef:
    """Stand-in for ``torch._utils._rebuild_tensor_v2``: only records its arguments."""
    return _TensorRef(storage, storage_offset, size, stride, metadata)


def _rebuild_parameter(data: object, requires_grad: object = False, backward_hooks: object = None) -> object:
    """Stand-in for ``torch._utils._rebuild_parameter``: a Parameter is just its tensor."""
    return data


def _rebuild_parameter_with_state(data: object, requires_grad: object, backward_hooks: object, state: object) -> object:
    """Stand-in for ``torch._utils._rebuild_parameter_with_state``: the extra Python state is dropped."""
    return data


def _torch_size(values: object = ()) -> tuple[int, ...]:
    """Stand-in for ``torch.Size``: a tuple of ints."""
    result = tuple(values)  # type: ignore[call-overload]
    if not all(type(v) is int for v in result):
        raise TypeError("torch.Size holds non-integers")
    return result


def _codecs_encode(text: object, encoding: object = "latin1") -> bytes:
    """Stand-in for ``_codecs.encode``, which protocol-2 pickles use to store ``bytes``."""
    if not isinstance(text, str) or encoding not in ("latin1", "latin-1"):
        raise TypeError("_codecs.encode is allowed only as encode(str, 'latin1')")
    return text.encode("latin-1")


_ALLOWED_GLOBALS: dict[tuple[str, str], object] = {
    ("collections", "OrderedDict"): _OrderedDictStandIn,
    ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor_v2,
    ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
    ("torch._utils", "_rebuild_parameter_with_state"): _rebuild_parameter_with_state,
    ("torch", "Size"): _torch_size,
    ("_codecs", "encode"): _codecs_encode,
    **{("torch", name): storage_type for name, storage_type in _STORAGE_TYPES.items()},
}


# --------------------------------------------------------------------------
# The restricted unpickler
# --------------------------------------------------------------------------


class _SafeUnpickler(pickle.Unpickler):
    """Unpickler that maps allowlisted globals to stand-ins and refuses all others.

    ``storage_format`` is ``"zip"`` or ``"legacy"`` (the two persistent-id
    layouts); ``None`` means the pickle may hold no persistent ids at all.
    Storages met while unpickling are collected in ``roots`` by key.
    """

    def __init__(self, file: IO[bytes], path: str, storage_format: str | None = None) -> None:
        super().__init__(file)
        self.path = path
        self.storage_format = storage_format
        self.roots: dict[str, _RootStorage] = {}

    def find_class(self, module: str, name: str) -> object:
        """Return our stand-in for ``module.name``, or refuse it."""
        module, name = _python3_name(module, name)
        stand_in = _ALLOWED_GLOBALS.get((module, name))
        if stand_in is not None:
            return stand_in
        if module == "torch" and name.endswith("Storage"):
            supported = ", ".join(f"torch.{n}" for n in _STORAGE_TYPES)
            raise CheckpointError(
                f"{self.path}: tensor storage type torch.{name} is not supported (supported: {supported})"
            )
        raise UnsafeCheckpointError(
            f"{self.path}: refusing to load: the checkpoint references the Python global "
            f"'{module}.{name}', which is not on the allowlist, and loading it could run code "
            f"from the file. {_RESAVE_ADVICE}"
        )

    def persistent_load(self, pid: object) -> _StorageView:
        """Turn a ``('storage', ...)`` persistent id into a :class:`_StorageView`."""
        if not (isinstance(pid, tuple) and pid and pid[0] == "storage"):
            kind = pid[0] if isinstance(pid, tuple) and pid else pid
            raise UnsafeCheckpointError(
                f"{self.path}: refusing to load: unsupported persistent id {kind!r} "
                f"(only 'storage' is accepted; 'module' means a whole pickled nn.Module). {_RESAVE_ADVICE}"
            )
        if self.storage_format == "zip" and len(pid) == 5:
            _, storage_type, key, _location, numel = pid
            view_metadata = None
        elif self.storage_format == "legacy" and len(pid) == 6:
            _, storage_type, key, _location, numel, view_metadata = pid
        else:
            raise CheckpointError(f"{self.path}: malformed storage persistent id {pid!r}")
        root = self._root_storage(storage_type, key, numel)
        if view_metadata is None:
            return _StorageView(root, 0, root.numel)
        return self._legacy_view(root, view_metadata)

    def _root_storage(self, storage_type: object, key: object, numel: object) -> _RootStorage:
        """Return the root storage ``key``, creating it on first sight and checking repeats agree."""
        if not isinstance(storage_type, _StorageType):
            raise CheckpointError(f"{self.path}: storage type {storage_type!r} is not a torch storage class")
        if not isinstance(key, str):
            raise CheckpointError(f"{self.path}: storage key {key!r} is not a string")
        if not _is_count(numel):
            raise CheckpointError(f"{self.path}: storage {key!r} has invalid element count {numel!r}")
        root = self.roots.get(key)
        if root is None:
            root = self.roots[key] = _RootStorage(key, storage_type, numel)
        elif root.storage_type is not storage_type or root.numel != numel:
            raise CheckpointError(
                f"{self.path}: storage {key!r} is described twice, as {root.numel} x {root.storage_type} "
                f"and as {numel} x {storage_type}"
            )
        return root

    def _legacy_view(self, root: _RootStorage, view_metadata: object) -> _StorageView:
        """Legacy storage view ``(view_key, offset, numel)``: a slice of ``root``."""
        if not (isinstance(view_metadata, tuple) and len(view_metadata) == 3):
            raise CheckpointError(f"{self.path}: malformed storage view metadata {view_metadata!r}")
        _view_key, offset, numel = view_metadata
        if not (_is_count(offset) and _is_count(numel) and offset + numel <= root.numel):
            raise CheckpointError(
                f"{self.path}: storage view [{offset!r}, +{numel!r}) does not fit in storage "
                f"{root.key!r} of {root.numel} elements"
            )
        return _StorageView(root, offset, numel)


def _python3_name(module: str, name: str) -> tuple[str, str]:
    """Translate a Python 2 spelling such as ``__builtin__.eval`` to ``builtins.eval``.

    Pickle protocols 0-2 (torch uses 2) write the Python 2 names, and the
    standard ``find_class`` translates them back; ours must do the same so
    that allowlist and error messages use the names people know.  Only the
    stdlib's own translation table is consulted; nothing is imported.
    """
    if (module, name) in _compat_pickle.NAME_MAPPING:
        return _compat_pickle.NAME_MAPPING[(module, name)]
    return _compat_pickle.IMPORT_MAPPING.get(module, module), name


def _is_count(value: object) -> bool:
    """True for a non-negative int (bools excluded)."""
    return type(value) is int and value >= 0


@contextlib.contextmanager
def _reading(path: str, what: str) -> Iterator[None]:
    """Turn any low-level failure while doing ``what`` into a :class:`CheckpointError`."""
    try:
        yield
    except CheckpointError:
        raise
    except Exception as exc:  # untrusted bytes: any parser error means a bad file
        raise CheckpointError(
            f"{path}: {what} failed; the file is truncated or corrupt ({type(exc).__name__}: {exc})"
        ) from exc


_MEMO_PUT_OPCODES = frozenset({"PUT", "BINPUT", "LONG_BINPUT"})


def _check_memo_indices(stream: IO[bytes], path: str, what: str) -> None:
    """List the pickle's opcodes without running them and reject absurd memo indices.

    CPython's C unpickler grows its memo table to twice the largest index a
    ``PUT`` opcode names, so a 9-byte pickle could make it fill gigabytes.
    A real pickler numbers its memo entries 0, 1, 2, ..., so an index larger
    than the number of opcodes read so far can only come from a forged file.
    The stream is rewound to where it was.
    """
    start = stream.tell()
    with _reading(path, f"scanning {what}"):
        for count, (opcode, arg, _pos) in enumerate(pickletools.genops(stream)):
            if opcode.name in _MEMO_PUT_OPCODES and arg > count:
                raise CheckpointError(f"{path}: {what}: pickle memo index {arg} is out of range")
    stream.seek(start)


def _unpickle(
    stream: IO[bytes], path: str, what: str, storage_format: str | None = None
) -> tuple[Any, dict[str, _RootStorage]]:
    """Safely unpickle one pickle from ``stream``; return it and the storages it names."""
    _check_memo_indices(stream, path, what)
    unpickler = _SafeUnpickler(stream, path, storage_format)
    with _reading(path, f"unpickling {what}"):
        obj = unpickler.load()
    return obj, unpickler.roots


# --------------------------------------------------------------------------
# Format detection
# --------------------------------------------------------------------------


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


# --------------------------------------------------------------------------
# The zip format
# --------------------------------------------------------------------------


def _load_zip(file: IO[bytes], path: str) -> tuple[object, dict[str, _RootStorage]]:
    """Unpickle ``<prefix>/data.pkl`` and read every storage it names from ``<prefix>/data/``."""
    with _reading(path, "opening the zip archive"):
        archive = zipfile.ZipFile(file)
    with archive:
        prefix = _zip_prefix(archive, path)
        byteorder = _zip_byteorder(archive, prefix, path)
        with _reading(path, f"reading {prefix}/data.pkl"):
            pickled = archive.read(f"{prefix}/data.pkl")
        tree, roots = _unpickle(io.BytesIO(pickled), path, f"{prefix}/data.pkl", storage_format="zip")
        for root in roots.values():
            root.data = _read_zip_storage(archive, prefix, root, byteorder, path)
    return tree, roots


def _zip_prefix(archive: zipfile.ZipFile, path: str) -> str:
    """The archive's top folder (torch takes it from the first entry), which must hold ``data.pkl``."""
    names = archive.namelist()
    prefix = names[0].split("/", 1)[0] if names else ""
    if f"{prefix}/data.pkl" not in names:
        raise CheckpointError(f"{path}: zip archive has no {prefix or '<prefix>'}/data.pkl; not a torch.save file")
    return prefix


def _zip_byteorder(archive: zipfile.ZipFile, prefix: str, path: str) -> str:
    """``"<"`` or ``">"`` from the ``byteorder`` record; files without one are little-endian."""
    name = f"{prefix}/byteorder"
    if name not in archive.namelist():
        return "<"
    with _reading(path, f"reading {name}"):
        record = archive.read(name)
    orders = {b"little": "<", b"big": ">"}
    if record not in orders:
        raise CheckpointError(f"{path}: unknown byte order {record[:20]!r} in {name}")
    return orders[record]


def _read_zip_storage(
    archive: zipfile.ZipFile, prefix: str, root: _RootStorage, byteorder: str, path: str
) -> np.ndarray:
    """Read record ``<prefix>/data/<key>`` as a 1-D array, checking its size first."""
    name = f"{prefix}/data/{root.key}"
    dtype = root.storage_type.dtype.newbyteorder(byteorder)
    expected = root.numel * dtype.itemsize
    try:
        info = archive.getinfo(name)
    except KeyError:
        raise CheckpointError(f"{path}: storage record {name} is missing") from None
    if info.file_size != expected:
        raise CheckpointError(
            f"{path}: storage record {name} holds {info.file_size} bytes, expected {expected} "
            f"({root.numel} x {root.storage_type})"
        )
    with _reading(path, f"reading {name}"):
        raw = archive.read(info)
    if len(raw) != expected:
        raise CheckpointError(f"{path}: storage record {name} is truncated")
    return np.frombuffer(raw, dtype=dtype)


# --------------------------------------------------------------------------
# The legacy format
# --------------------------------------------------------------------------


def _load_legacy(stream: io.BytesIO, path: str) -> tuple[object, dict[str, _RootStorage]]:
    """Read the legacy stream: magic, version, sys_info, main pickle, key list, storages."""
    magic, _ = _unpickle(stream, path, "the legacy magic number")
    version, _ = _unpickle(stream, path, "the legacy protocol version")
    sys_info, _ = _unpickle(stream, path, "the legacy sys_info")
    if type(magic) is not int or magic != LEGACY_MAGIC_NUMBER:
        raise CheckpointError(f"{path}: bad legacy magic number")
    if type(version) is not int or version != LEGACY_PROTOCOL_VERSION:
        raise CheckpointError(f"{path}: unsupported legacy protocol version {version!r}")
    if not isinstance(sys_info, dict):
        raise CheckpointError(f"{path}: legacy sys_info is not a dict")

    tree, roots = _unpickle(stream, path, "the legacy main pickle", storage_format="legacy")
    keys, _ = _unpickle(stream, path, "the legacy storage key list")
    _check_legacy_keys(keys, roots, path)
    for key in keys:
        roots[key].data = _read_legacy_storage(stream, roots[key], path)
    return tree, roots


def _check_legacy_keys(keys: object, roots: dict[str, _RootStorage], path: str) -> None:
    """The key list must name each storage of the main pickle exactly once."""
    if not (isinstance(keys, list) and all(isinstance(k, str) for k in keys)):
        raise CheckpointError(f"{path}: legacy storage key list is malformed")
    if len(set(keys)) != len(keys) or set(keys) != set(roots):
        missing = sorted(set(roots) - set(keys))[:5]
        unknown = sorted(set(keys) - set(roots))[:5]
        raise CheckpointError(
            f"{path}: legacy storage key list does not match the pickle "
            f"(missing: {missing}, unknown: {unknown}, duplicates: {len(keys) - len(set(keys))})"
        )


def _read_legacy_storage(stream: io.BytesIO, root: _RootStorage, path: str) -> np.ndarray:
    """Read one legacy storage: int64 little-endian element count, then the little-endian elements."""
    (count,) = struct.unpack("<q", _read_exactly(stream, 8, path, f"the size of storage {root.key!r}"))
    if count != root.numel:
        raise CheckpointError(
            f"{path}: storage {root.key!r} has {count} elements in the data section, but the pickle says {root.numel}"
        )
    dtype = root.storage_type.dtype.newbyteorder("<")
    raw = _read_exactly(stream, count * dtype.itemsize, path, f"storage {root.key!r}")
    return np.frombuffer(raw, dtype=dtype)


def _read_exactly(file: IO[bytes], nbytes: int, path: str, what: str) -> bytes:
    """Read ``nbytes`` bytes or raise :class:`CheckpointError` naming ``what`` was cut short."""
    with _reading(path, f"reading {what}"):
        data = file.read(nbytes)
    if len(data) != nbytes:
        raise CheckpointError(f"{path}: file ends inside {what} (truncated?)")
    return data


# --------------------------------------------------------------------------
# From stand-ins to numpy arrays
# --------------------------------------------------------------------------


def _check_tensor(tensor: _TensorRef, path: str) -> _StorageView:
    """Check a tensor's storage and geometry; return its storage view."""
    view = tensor.storage
    if not isinstance(view, _StorageView) or view.root.data is None:
        raise CheckpointError(f"{path}: tensor storage is not a torch storage")
    _check_tensor_geometry(tensor.storage_offset, tensor.size, tensor.stride, view.numel, path)
    return view


def _output_nbytes(tensor: _TensorRef) -> int:
    """Bytes of the array :func:`_tensor_to_numpy` will build for a checked tensor."""
    storage_type = tensor.storage.root.storage_type  # type: ignore[attr-defined]
    itemsize = 4 if storage_type.name == "BFloat16Storage" else storage_type.dtype.itemsize
    return itemsize * int(np.prod(tensor.size, dtype=object))


def _tensor_to_numpy(tensor: _TensorRef, path: str) -> np.ndarray:
    """Build a C-contiguous native-endian array for a tensor that passed :func:`_check_tensor`."""
    view = tensor.storage
    assert isinstance(view, _StorageView) and view.root.data is not None
    offset, size, stride = tensor.storage_offset, tensor.size, tensor.stride
    storage_type = view.root.storage_type
    elements = view.root.data[view.start : view.start + view.numel]
    if 0 in size:
        strided = np.empty(size, dtype=elements.dtype)
    else:
        itemsize = elements.dtype.itemsize
        strided = np.lib.stride_tricks.as_strided(
            elements[offset:], shape=size, strides=[s * itemsize for s in stride], writeable=False
        )
    array = np.array(strided, dtype=elements.dtype.newbyteorder("="), order="C")  # a copy, native order
    array = _finish_dtype(array, storage_type)
    return _apply_metadata(array, tensor.metadata, path)


def _check_tensor_geometry(offset: object, size: object, stride: object, numel: int, path: str) -> None:
    """Check offset/size/stride are non-negative ints and every element lies inside the storage."""
    if not (isinstance(size, tuple) and isinstance(stride, tuple) and len(size) == len(stride)):
        raise CheckpointError(f"{path}: tensor size {size!r} / stride {stride!r} are malformed")
    if len(size) > _MAX_NDIM:
        raise CheckpointError(f"{path}: tensor has {len(size)} dimensions (at most {_MAX_NDIM} supported)")
    if not (_is_count(offset) and all(map(_is_count, size)) and all(map(_is_count, stride))):
        raise CheckpointError(
            f"{path}: tensor offset {offset!r}, size {size!r}, stride {stride!r} must be non-negative ints"
        )
    if 0 in size:
        return
    last = offset + sum((n - 1) * s for n, s in zip(size, stride, strict=True))
    if last >= numel:
        raise CheckpointError(
            f"{path}: tensor with offset {offset}, size {size}, stride {stride} reads element {last} "
            f"of a storage with only {numel} elements"
        )


def _finish_dtype(array: np.ndarray, storage_type: _StorageType) -> np.ndarray:
    """Turn raw bfloat16 bits into float32 and the bytes of a BoolStorage into bool.

    (Only in-place or ``astype`` steps are used, so 0-d arrays stay arrays.)
    """
    if storage_type.name == "BFloat16Storage":
        widened = array.astype(np.uint32)
        widened <<= 16  # bfloat16 is the top half of a float32
        return widened.view(np.float32)
    if storage_type.name == "BoolStorage":
        return array.astype(bool)
    return array


def _apply_metadata(array: np.ndarray, metadata: object, path: str) -> np.ndarray:
    """Apply tensor metadata: ``{'neg': True}`` marks a negated view; ``conj`` is a no-op for reals."""
    if not metadata:
        return array
    if not isinstance(metadata, dict) or not set(metadata) <= {"neg", "conj"}:
        raise CheckpointError(f"{path}: unsupported tensor metadata {metadata!r}")
    if metadata.get("neg"):
        if array.dtype == bool:
            raise CheckpointError(f"{path}: a bool tensor cannot be a negated view")
        np.negative(array, out=array)
    return array


class _Resolver:
    """Walk the unpickled tree and replace every stand-in by its final value.

    Tensors become numpy arrays, ``OrderedDict`` stand-ins become dicts.
    Shared sub-objects stay shared, and self-referencing lists and dicts
    (possible in a pickle) are rebuilt with the same cycles.
    """

    def __init__(self, path: str, max_output_bytes: int) -> None:
        self.path = path
        self.done: dict[int, object] = {}
        self.in_progress: set[int] = set()
        self.bytes_left = max_output_bytes

    def resolve(self, obj: object) -> Any:
        """Return ``obj`` with stand-ins replaced."""
        if obj is None or isinstance(obj, (bool, int, float, complex, str, bytes)):
            return obj
        key = id(obj)
        if key in self.done:
            return self.done[key]
        if key in self.in_progress:
            raise CheckpointError(f"{self.path}: the object tree loops through a tuple or set")
        self.in_progress.add(key)
        result = self._resolve_new(obj)
        self.in_progress.discard(key)
        self.done[key] = result
        return result

    def _resolve_new(self, obj: object) -> object:
        if isinstance(obj, _TensorRef):
            return self._array(obj)
        if isinstance(obj, _StorageView):  # a storage saved on its own: a 1-D array
            return self._array(_TensorRef(obj, 0, (obj.numel,), (1,), None))
        if isinstance(obj, dict):
            result: dict[object, object] = {}
            self.done[id(obj)] = result  # registered first so that cycles find it
            for key, value in obj.items():
                result[self.resolve(key)] = self.resolve(value)
            return result
        if isinstance(obj, list):
            items: list[object] = []
            self.done[id(obj)] = items
            items.extend(self.resolve(item) for item in obj)
            return items
        if isinstance(obj, tuple):
            return tuple(self.resolve(item) for item in obj)
        if isinstance(obj, (set, frozenset)):
            return type(obj)(self.resolve(item) for item in obj)
        if isinstance(obj, bytearray):
            return obj
        raise CheckpointError(f"{self.path}: unexpected object of type {type(obj).__name__} in the checkpoint")

    def _array(self, tensor: _TensorRef) -> np.ndarray:
        """Check ``tensor``, charge its size to the memory budget, and build it."""
        _check_tensor(tensor, self.path)
        nbytes = _output_nbytes(tensor)
        if nbytes > self.bytes_left:
            raise CheckpointError(
                f"{self.path}: the tensors would need more memory than a file of this size can "
                f"justify (a stride-0 or heavily shared storage?); refusing to build a {nbytes}-byte array"
            )
        self.bytes_left -= nbytes
        return _tensor_to_numpy(tensor, self.path)


# --------------------------------------------------------------------------
# Public entry point
# --------------------------------------------------------------------------


def load_torch_checkpoint(path: str | os.PathLike) -> object:
    """Return the checkpoint's object tree with every tensor replaced by a C-contiguous numpy array
    (dtype float32/float64/float16/int64/int32/int16/int8/uint8/bool; bfloat16 widened to float32),
    dicts/OrderedDicts as dict (order kept), lists/tuples as is, ints/floats/strings as is.

    Both ``torch.save`` formats are read (zip and legacy).  Only an allowlist
    of globals is accepted; anything else raises
    :class:`UnsafeCheckpointError`.  Every other problem with the file's
    contents raises :class:`CheckpointError`.  Errors opening the file
    (e.g. ``FileNotFoundError``) propagate unchanged.
    """
    name = os.fspath(path)
    with open(name, "rb") as file:
        file_size = os.fstat(file.fileno()).st_size
        file_format = _detect_format(file, name)
        if file_format == "zip":
            tree, _roots = _load_zip(file, name)
        else:
            tree, _roots = _load_legacy(io.BytesIO(file.read()), name)
    with _reading(name, "converting tensors to numpy arrays"):
        budget = _OUTPUT_BYTES_PER_FILE_BYTE * file_size + _OUTPUT_BYTES_ALLOWANCE
        return _Resolver(name, budget).resolve(tree)
