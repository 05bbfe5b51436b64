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
"global" such as ``os.system``) and call it with arguments from the file,
and its ``BUILD`` opcode sets attributes on whatever object is on its stack.
Loading an untrusted checkpoint with plain pickle can therefore run
arbitrary code.  Even a restricted ``pickle.Unpickler`` is not enough: its
``BUILD`` would still set attributes on the allowed functions themselves
(``_rebuild_tensor_v2.__defaults__``, say, poisoning every later load in
the process), it hashes dict keys of any type (a tuple nested a million
deep crashes the interpreter; a tuple shared 60 levels deep never finishes
hashing), and it builds sets, objects and memo tables of any size.

So this module does not use the pickle machinery at all.
:mod:`pickletools` decodes the opcodes (it only parses bytes), and
:class:`_SafeUnpickler` interprets the few that a checkpoint needs:
constants, tuples, lists, dicts with string or integer keys, the memo, a
short allowlist of globals (answered with *our own* stand-ins; no import,
no attribute lookup by a name from the file) and calls of those stand-ins.
``BUILD`` is accepted only on an ``OrderedDict`` the reader itself made,
and its state is dropped.  Any other global is refused with
:class:`UnsafeCheckpointError`.  Nothing from the file is ever executed;
the stand-ins only record their arguments, and every tensor is rebuilt
later as a numpy array after its offset, size and stride have been checked
against the storage length.

Hostile files
-------------
Every failure (truncated file, bad zip, malformed pickle, a limit below)
is a :class:`CheckpointError` with a one-line message of at most a few
hundred characters (:mod:`.messages`).  Beyond refusing code, the reader
bounds the time and memory a file can make it spend:

* only regular files are opened (a named pipe would block forever);
* a pickle may span at most :data:`MAX_PICKLE_BYTES` and run at most
  :data:`MAX_PICKLE_OPS` opcodes (each opcode adds at most one reference,
  so this bounds the objects built), integers have at most
  :data:`MAX_INT_BITS` bits, and the object tree is at most
  :data:`MAX_DEPTH` containers deep;
* every allocation of file-declared size (``data.pkl``, each storage, each
  array built) is charged to a :class:`_Budget` *before* it is made, and
  zip members are read only up to their declared size;
* a view that repeats elements (stride 0, overlapping strides) may not
  expand beyond :data:`MAX_EXPANDED_ELEMENTS`, twice the largest tensor of
  any real ShuffleNet (the V2 x2.0 classifier, 2048 x 1000).
"""

from __future__ import annotations

import _compat_pickle
import contextlib
import io
import math
import os
import pickletools
import stat
import struct
import zipfile
from collections.abc import Callable, Iterator
from typing import IO, Any

import numpy as np

from .messages import one_line, show

__all__ = ["CheckpointError", "UnsafeCheckpointError", "load_torch_checkpoint", "open_regular_file"]

LEGACY_MAGIC_NUMBER = 0x1950A86A20F9469CFC6C
LEGACY_PROTOCOL_VERSION = 1001

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

_RESAVE_ADVICE = (
    "This loader accepts only tensors, dicts, lists, tuples, numbers and strings. "
    "Re-save just the weights with `torch.save(model.state_dict(), path)`."
)


class CheckpointError(ValueError):
    """The file is not a readable PyTorch checkpoint; the message (one line) says which file and why."""

    def __init__(self, message: str) -> None:
        super().__init__(one_line(message))


class UnsafeCheckpointError(CheckpointError):
    """The checkpoint asks for a Python global (code) outside the allowlist, or to build an object."""


class _Malformed(Exception):
    """Raised inside the unpickler; :func:`_unpickle` adds the file and pickle to the message."""


# --------------------------------------------------------------------------
# Stand-ins for the few torch objects a checkpoint may name
# --------------------------------------------------------------------------


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


class _OrderedDictStandIn(dict):
    """What ``collections.OrderedDict(...)`` in a pickle makes; becomes a plain dict at the end.

    ``state_dict()`` results carry a ``_metadata`` attribute that the pickle
    restores with ``BUILD``.  An instance of this class is the one object
    ``BUILD`` may target, and the state is dropped.
    """


def _is_key(value: object) -> bool:
    """Dict keys a checkpoint has: strings (state dicts), ints (optimizer state).

    Anything else is refused before it is hashed: hashing a deep or shared
    tuple can crash the interpreter or never finish.
    """
    return type(value) is str or type(value) is int


def _set_item(target: dict, key: object, value: object) -> None:
    if not _is_key(key):
        raise _Malformed(
            f"a dict key is a {type(key).__name__} ({show(key)}); checkpoint keys are strings or integers"
        )
    target[key] = value


def _ordered_dict(items: object = ()) -> _OrderedDictStandIn:
    """Stand-in for ``collections.OrderedDict``: no argument, or (Python 2 pickles) a list of [key, value] pairs."""
    result = _OrderedDictStandIn()
    if type(items) not in (list, tuple):
        raise _Malformed(f"OrderedDict({show(items)}) is not a list of pairs")
    for pair in items:
        if type(pair) not in (list, tuple) or len(pair) != 2:
            raise _Malformed(f"OrderedDict item {show(pair)} is not a [key, value] pair")
        _set_item(result, pair[0], pair[1])
    return result


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
    if type(values) not in (tuple, list) or not all(type(v) is int for v in values):
        raise _Malformed(f"torch.Size({show(values)}) does not hold integers")
    return tuple(values)


def _codecs_encode(text: object, encoding: object = "latin1") -> bytes:
    """Stand-in for ``_codecs.encode``, which protocol-2 pickles use to store ``bytes``."""
    if type(text) is not str or type(encoding) is not str or encoding not in ("latin1", "latin-1"):
        raise _Malformed("_codecs.encode is allowed only as encode(str, 'latin1')")
    return text.encode("latin-1")


_ALLOWED_GLOBALS: dict[tuple[str, str], object] = {
    ("collections", "OrderedDict"): _ordered_dict,
    ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor_v2,
    ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
    ("torch._utils", "_rebuild_parameter_with_state"): _rebuild_parameter_with_state,
    ("torch", "Size"): _torch_size,
    ("_codecs", "encode"): _codecs_encode,
    **{("torch", name): storage_type for name, storage_type in _STORAGE_TYPES.items()},
}
# The globals a pickle may call (REDUCE); the storage types are only named in persistent ids.
_CALLABLE: tuple[Callable[..., object], ...] = (
    _ordered_dict, _rebuild_tensor_v2, _rebuild_parameter, _rebuild_parameter_with_state, _torch_size, _codecs_encode,
)


_GLOBAL_NAMES: dict[int, tuple[str, object]] = {
    id(stand_in): (f"{module}.{name}", stand_in) for (module, name), stand_in in _ALLOWED_GLOBALS.items()
}


def _describe(value: object) -> str:
    """What to call ``value`` in a message: the global it stands in for, else a short repr."""
    name, stand_in = _GLOBAL_NAMES.get(id(value), ("", None))
    return name if stand_in is value else show(value)


# --------------------------------------------------------------------------
# The restricted unpickler
# --------------------------------------------------------------------------


# Opcodes that build instances of classes (directly or through copyreg); a state dict needs none.
_OBJECT_OPCODES = frozenset({"INST", "OBJ", "NEWOBJ", "NEWOBJ_EX", "EXT1", "EXT2", "EXT4"})
_OTHER_REFUSED_OPCODES = {
    "EMPTY_SET": "a set",
    "ADDITEMS": "a set",
    "FROZENSET": "a frozenset",
    "BYTEARRAY8": "a bytearray",
    "NEXT_BUFFER": "an out-of-band buffer",
    "READONLY_BUFFER": "an out-of-band buffer",
}


class _SafeUnpickler:
    """Interpret one pickle, opcode by opcode, as :func:`pickletools.genops` decodes it.

    An opcode is understood only if this class has an ``_op_<NAME>`` method
    for it; the rest (sets, bytearrays, buffers, building objects) stop
    loading.  The interpreter never calls anything but the stand-ins in
    :data:`_CALLABLE`, never sets an attribute, never hashes anything but a
    string or an integer, and never recurses, so neither the shape nor the
    size of the object tree can crash it.

    ``storage_format`` is ``"zip"`` or ``"legacy"`` (the two persistent-id
    layouts); ``None`` means the pickle may hold no persistent ids at all.
    Storages met while unpickling are collected in ``roots`` by key.
    """

    def __init__(self, path: str, what: str, storage_format: str | None = None) -> None:
        self.path = path
        self.what = what
        self.storage_format = storage_format
        self.roots: dict[str, _RootStorage] = {}
        self.stack: list[object] = []
        self.marks: list[int] = []  # stack heights at each pending MARK
        self.memo: dict[int, object] = {}
        self.ops = 0  # opcodes run so far

    def load(self, stream: IO[bytes]) -> object:
        """Run the pickle in ``stream`` up to its STOP and return its value."""
        for opcode, arg, _pos in pickletools.genops(stream):
            self.ops += 1
            if self.ops > MAX_PICKLE_OPS:
                raise _Malformed(f"more than {MAX_PICKLE_OPS:,} pickle opcodes; a state dict needs far fewer")
            if opcode.name == "STOP":
                return self._pop()
            handler = getattr(self, f"_op_{opcode.name}", None)
            if handler is None:
                self._refuse_opcode(opcode.name)
            handler(arg)
        raise _Malformed("the pickle has no STOP opcode")  # not reached: genops raises first

    def _refuse_opcode(self, name: str) -> None:
        if name in _OBJECT_OPCODES:
            raise UnsafeCheckpointError(
                f"{self.path}: refusing to load: {self.what} builds a Python object (pickle opcode {name}). "
                f"{_RESAVE_ADVICE}"
            )
        meaning = _OTHER_REFUSED_OPCODES.get(name, "not written by torch.save")
        raise _Malformed(f"pickle opcode {name} ({meaning}) is not accepted in a checkpoint")

    # ---- the stack ---------------------------------------------------------

    def _fence(self) -> int:
        return self.marks[-1] if self.marks else 0

    def _pop_n(self, n: int) -> list[object]:
        if len(self.stack) - self._fence() < n:
            raise _Malformed("pickle stack underflow")
        items = self.stack[len(self.stack) - n :]
        del self.stack[len(self.stack) - n :]
        return items

    def _pop(self) -> object:
        return self._pop_n(1)[0]

    def _top(self) -> object:
        if len(self.stack) <= self._fence():
            raise _Malformed("pickle stack underflow")
        return self.stack[-1]

    def _pop_mark(self) -> list[object]:
        if not self.marks:
            raise _Malformed("pickle stack underflow (no MARK)")
        start = self.marks.pop()
        items = self.stack[start:]
        del self.stack[start:]
        return items

    def _op_MARK(self, _arg: None) -> None:
        self.marks.append(len(self.stack))

    def _op_POP(self, _arg: None) -> None:
        if len(self.stack) > self._fence():
            self.stack.pop()
        else:
            self._pop_mark()  # popping an empty MARKed section drops the MARK

    def _op_POP_MARK(self, _arg: None) -> None:
        self._pop_mark()

    def _op_DUP(self, _arg: None) -> None:
        self.stack.append(self._top())

    def _op_PROTO(self, version: int) -> None:
        if version > 5:
            raise _Malformed(f"pickle protocol {version} is not supported")

    def _op_FRAME(self, _size: int) -> None:
        pass  # frames only group opcodes for buffered reading

    # ---- constants -----------------------------------------------------------

    def _push(self, value: object) -> None:
        self.stack.append(value)

    _op_FLOAT = _op_BINFLOAT = _push
    _op_UNICODE = _op_SHORT_BINUNICODE = _op_BINUNICODE = _op_BINUNICODE8 = _push
    _op_BINBYTES = _op_SHORT_BINBYTES = _op_BINBYTES8 = _push

    def _push_int(self, value: int) -> None:
        if value.bit_length() > MAX_INT_BITS:
            raise _Malformed(f"holds a {value.bit_length()}-bit integer (at most {MAX_INT_BITS} bits are accepted)")
        self.stack.append(value)

    _op_INT = _op_BININT = _op_BININT1 = _op_BININT2 = _op_LONG = _op_LONG1 = _op_LONG4 = _push_int

    def _push_python2_str(self, text: str) -> None:
        """A Python 2 ``str`` (pickletools decodes it as Latin-1); torch.load reads it as UTF-8."""
        try:
            self.stack.append(text.encode("latin-1").decode("utf-8"))
        except UnicodeError:
            raise _Malformed(f"the Python 2 string {show(text)} is not UTF-8") from None

    _op_STRING = _op_BINSTRING = _op_SHORT_BINSTRING = _push_python2_str

    def _op_NONE(self, _arg: None) -> None:
        self.stack.append(None)

    def _op_NEWTRUE(self, _arg: None) -> None:
        self.stack.append(True)

    def _op_NEWFALSE(self, _arg: None) -> None:
        self.stack.append(False)

    # ---- tuples, lists, dicts ------------------------------------------------

    def _op_EMPTY_TUPLE(self, _arg: None) -> None:
        self.stack.append(())

    def _op_TUPLE(self, _arg: None) -> None:
        self.stack.append(tuple(self._pop_mark()))

    def _op_TUPLE1(self, _arg: None) -> None:
        self.stack.append(tuple(self._pop_n(1)))

    def _op_TUPLE2(self, _arg: None) -> None:
        self.stack.append(tuple(self._pop_n(2)))

    def _op_TUPLE3(self, _arg: None) -> None:
        self.stack.append(tuple(self._pop_n(3)))

    def _op_EMPTY_LIST(self, _arg: None) -> None:
        self.stack.append([])

    def _op_LIST(self, _arg: None) -> None:
        self.stack.append(self._pop_mark())

    def _list_on_top(self) -> list:
        target = self._top()
        if type(target) is not list:
            raise _Malformed(f"APPEND to a {type(target).__name__}, not a list")
        return target

    def _op_APPEND(self, _arg: None) -> None:
        value = self._pop()
        self._list_on_top().append(value)

    def _op_APPENDS(self, _arg: None) -> None:
        items = self._pop_mark()
        self._list_on_top().extend(items)

    def _op_EMPTY_DICT(self, _arg: None) -> None:
        self.stack.append({})

    def _op_DICT(self, _arg: None) -> None:
        result: dict = {}
        self._set_items(result, self._pop_mark())
        self.stack.append(result)

    def _dict_on_top(self) -> dict:
        target = self._top()
        if type(target) not in (dict, _OrderedDictStandIn):
            raise _Malformed(f"SETITEM on a {type(target).__name__}, not a dict")
        return target  # type: ignore[return-value]

    def _op_SETITEM(self, _arg: None) -> None:
        key, value = self._pop_n(2)
        _set_item(self._dict_on_top(), key, value)

    def _op_SETITEMS(self, _arg: None) -> None:
        items = self._pop_mark()
        self._set_items(self._dict_on_top(), items)

    @staticmethod
    def _set_items(target: dict, items: list[object]) -> None:
        if len(items) % 2:
            raise _Malformed("a dict's keys and values do not pair up")
        for index in range(0, len(items), 2):
            _set_item(target, items[index], items[index + 1])

    # ---- the memo --------------------------------------------------------------

    def _op_PUT(self, index: int) -> None:
        """A real pickler numbers its memo entries 0, 1, 2, ...; a larger index means a forged file.

        (CPython's own unpickler would grow its memo table to twice the index.)
        """
        if type(index) is not int or not 0 <= index <= self.ops:
            raise _Malformed(f"pickle memo index {show(index)} is out of range")
        self.memo[index] = self._top()

    _op_BINPUT = _op_LONG_BINPUT = _op_PUT

    def _op_MEMOIZE(self, _arg: None) -> None:
        self.memo[len(self.memo)] = self._top()

    def _op_GET(self, index: int) -> None:
        try:
            self.stack.append(self.memo[index])
        except KeyError:
            raise _Malformed(f"pickle memo entry {show(index)} is missing") from None

    _op_BINGET = _op_LONG_BINGET = _op_GET

    # ---- globals, calls, state, persistent ids ---------------------------------

    def _op_GLOBAL(self, module_and_name: str) -> None:
        module, _, name = module_and_name.partition(" ")
        self.stack.append(self._find_class(module, name))

    def _op_STACK_GLOBAL(self, _arg: None) -> None:
        module, name = self._pop_n(2)
        if type(module) is not str or type(name) is not str:
            raise _Malformed("STACK_GLOBAL needs a module name and a name")
        self.stack.append(self._find_class(module, name))

    def _find_class(self, module: str, name: str) -> object:
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

    def _op_REDUCE(self, _arg: None) -> None:
        function, args = self._pop_n(2)
        if not any(function is allowed for allowed in _CALLABLE):
            raise _Malformed(f"the pickle calls {_describe(function)}, which is not a function it may call")
        if type(args) is not tuple:
            raise _Malformed(f"the arguments of {_describe(function)} are not a tuple")
        try:
            result = function(*args)  # type: ignore[operator]
        except TypeError:
            raise _Malformed(f"{_describe(function)} is called with {len(args)} arguments") from None
        self.stack.append(result)

    def _op_BUILD(self, _arg: None) -> None:
        """Only ``OrderedDict._metadata`` (a state dict's module versions) is ever set; it is dropped.

        ``BUILD`` on anything else would write attributes into an object the
        file chose, such as one of our stand-in functions.
        """
        self._pop()  # the state
        target = self._top()
        if type(target) is not _OrderedDictStandIn:
            raise UnsafeCheckpointError(
                f"{self.path}: refusing to load: {self.what} sets attributes of {_describe(target)} "
                f"(pickle opcode BUILD); only an OrderedDict's may be set. {_RESAVE_ADVICE}"
            )

    def _op_PERSID(self, pid: str) -> None:
        self.stack.append(self._persistent_load(pid))

    def _op_BINPERSID(self, _arg: None) -> None:
        self.stack.append(self._persistent_load(self._pop()))

    def _persistent_load(self, pid: object) -> _StorageView:
        """Turn a ``('storage', ...)`` persistent id into a :class:`_StorageView`."""
        if not (type(pid) is tuple and pid and pid[0] == "storage"):
            kind = pid[0] if type(pid) is tuple and pid else pid
            raise UnsafeCheckpointError(
                f"{self.path}: refusing to load: unsupported persistent id {show(kind)} "
                f"(only 'storage' is accepted; 'module' means a whole pickled nn.Module). {_RESAVE_ADVICE}"
            )
        if self.storage_format == "zip" and len(pid) == 5:
            _, storage_type, key, _location, numel = pid
            view_metadata = None
        elif self.storage_format == "legacy" and len(pid) == 6:
            _, storage_type, key, _location, numel, view_metadata = pid
        else:
            raise _Malformed(f"malformed storage persistent id {show(pid)}")
        root = self._root_storage(storage_type, key, numel)
        if view_metadata is None:
            return _StorageView(root, 0, root.numel)
        return self._legacy_view(root, view_metadata)

    def _root_storage(self, storage_type: object, key: object, numel: object) -> _RootStorage:
        """Return the root storage ``key``, creating it on first sight and checking repeats agree."""
        if not isinstance(storage_type, _StorageType):
            raise _Malformed(f"storage type {show(storage_type)} is not a torch storage class")
        if type(key) is not str:
            raise _Malformed(f"storage key {show(key)} is not a string")
        if not _is_count(numel):
            raise _Malformed(f"storage {show(key)} has invalid element count {show(numel)}")
        root = self.roots.get(key)
        if root is None:
            root = self.roots[key] = _RootStorage(key, storage_type, numel)  # type: ignore[arg-type]
        elif root.storage_type is not storage_type or root.numel != numel:
            raise _Malformed(
                f"storage {show(key)} is described twice, as {root.numel} x {root.storage_type} "
                f"and as {numel} x {storage_type}"
            )
        return root

    def _legacy_view(self, root: _RootStorage, view_metadata: object) -> _StorageView:
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


def _unpickle(
    stream: IO[bytes], path: str, what: str, storage_format: str | None = None
) -> tuple[Any, dict[str, _RootStorage]]:
    """Safely unpickle one pickle from ``stream``; return it and the storages it names."""
    unpickler = _SafeUnpickler(path, what, storage_format)
    with _reading(path, f"unpickling {what}"):
        try:
            obj = unpickler.load(stream)
        except _Malformed as exc:
            raise CheckpointError(f"{path}: {what}: {exc}") from None
    return obj, unpickler.roots


# --------------------------------------------------------------------------
# Reading with bounds
# --------------------------------------------------------------------------


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
    """Open ``path`` for binary reading, refusing anything but a regular file.

    Opening a named pipe blocks until someone writes to it, and a device
    such as ``/dev/zero`` never ends, so the file is opened without blocking
    and its type checked before a byte is read.  ``OSError`` (no such file,
    permission denied) propagates.
    """
    nonblock = getattr(os, "O_NONBLOCK", 0)
    fd = os.open(path, os.O_RDONLY | nonblock | getattr(os, "O_BINARY", 0))
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise CheckpointError(f"{path}: not a regular file (a folder, pipe or device)")
        if nonblock:
            os.set_blocking(fd, True)
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise


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


# --------------------------------------------------------------------------
# The legacy format
# --------------------------------------------------------------------------


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


def _check_tensor_geometry(offset: object, size: object, stride: object, numel: int, path: str) -> None:
    """Check offset/size/stride are non-negative ints and every element lies inside the storage."""
    if not (type(size) is tuple and type(stride) is tuple and len(size) == len(stride)):
        raise CheckpointError(f"{path}: tensor size {show(size)} / stride {show(stride)} are malformed")
    if len(size) > _MAX_NDIM:
        raise CheckpointError(f"{path}: tensor has {len(size)} dimensions (at most {_MAX_NDIM} supported)")
    if not (_is_count(offset) and all(map(_is_count, size)) and all(map(_is_count, stride))):
        raise CheckpointError(
            f"{path}: tensor offset {show(offset)}, size {show(size)}, stride {show(stride)} "
            "must be non-negative ints"
        )
    if 0 in size:
        return
    last = offset + sum((n - 1) * s for n, s in zip(size, stride, strict=True))  # type: ignore[operator]
    if last >= numel:
        raise CheckpointError(
            f"{path}: tensor with offset {show(offset)}, size {show(size)}, stride {show(stride)} "
            f"reads element {show(last)} of a storage with only {numel} elements"
        )


def _output_itemsize(storage_type: _StorageType) -> int:
    return 4 if storage_type.name == "BFloat16Storage" else storage_type.dtype.itemsize


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
        strides = [s * itemsize if n > 1 else 0 for n, s in zip(size, stride, strict=True)]  # any stride fits 1 row
        strided = np.lib.stride_tricks.as_strided(elements[offset:], shape=size, strides=strides, writeable=False)
    array = np.array(strided, dtype=elements.dtype.newbyteorder("="), order="C")  # a copy, native order
    array = _finish_dtype(array, storage_type)
    return _apply_metadata(array, tensor.metadata, path)


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
    if metadata is None or (isinstance(metadata, dict) and not metadata):
        return array
    if not (isinstance(metadata, dict) and set(metadata) <= {"neg", "conj"}
            and all(type(flag) is bool for flag in metadata.values())):
        raise CheckpointError(f"{path}: unsupported tensor metadata {show(metadata)}")
    if metadata.get("neg"):
        if array.dtype == bool:
            raise CheckpointError(f"{path}: a bool tensor cannot be a negated view")
        np.negative(array, out=array)
    return array


_ATOMS = (type(None), bool, int, float, str, bytes)


class _Resolver:
    """Walk the unpickled tree and replace every stand-in by its final value.

    Tensors become numpy arrays, ``OrderedDict`` stand-ins become dicts.
    Shared sub-objects stay shared (so a tree that shares one tuple 60
    levels deep is walked once per object, not once per path), and
    self-referencing lists and dicts (possible in a pickle) are rebuilt with
    the same cycles.  The walk recurses, so it stops at :data:`MAX_DEPTH`.
    """

    def __init__(self, path: str, budget: _Budget) -> None:
        self.path = path
        self.done: dict[int, object] = {}
        self.in_progress: set[int] = set()
        self.budget = budget

    def resolve(self, obj: object, depth: int = 0) -> Any:
        """Return ``obj`` with stand-ins replaced."""
        if type(obj) in _ATOMS:
            return obj
        key = id(obj)
        if key in self.done:
            return self.done[key]
        if key in self.in_progress:
            raise CheckpointError(f"{self.path}: the object tree loops through a tuple")
        if depth >= MAX_DEPTH:
            raise CheckpointError(f"{self.path}: the object tree is nested more than {MAX_DEPTH} levels deep")
        self.in_progress.add(key)
        result = self._resolve_new(obj, depth)
        self.in_progress.discard(key)
        self.done[key] = result
        return result

    def _resolve_new(self, obj: object, depth: int) -> object:
        if isinstance(obj, _TensorRef):
            return self._array(obj)
        if isinstance(obj, _StorageView):  # a storage saved on its own: a 1-D array
            return self._array(_TensorRef(obj, 0, (obj.numel,), (1,), None))
        if type(obj) in (dict, _OrderedDictStandIn):
            result: dict[object, object] = {}
            self.done[id(obj)] = result  # registered first so that cycles find it
            for key, value in obj.items():  # type: ignore[attr-defined]
                result[key] = self.resolve(value, depth + 1)  # keys are str or int (_set_item)
            return result
        if type(obj) is list:
            items: list[object] = []
            self.done[id(obj)] = items
            items.extend(self.resolve(item, depth + 1) for item in obj)
            return items
        if type(obj) is tuple:
            return tuple(self.resolve(item, depth + 1) for item in obj)
        raise CheckpointError(f"{self.path}: unexpected object {_describe(obj)} in the checkpoint")

    def _array(self, tensor: _TensorRef) -> np.ndarray:
        """Check ``tensor``, charge its size to the memory budget, and build it."""
        view = _check_tensor(tensor, self.path)
        numel = math.prod(tensor.size)  # type: ignore[arg-type]
        if numel > view.numel and numel > MAX_EXPANDED_ELEMENTS:
            raise CheckpointError(
                f"{self.path}: a tensor of size {show(tensor.size)} repeats the elements of a {view.numel}-element "
                f"storage (stride 0 or overlapping) to {show(numel)} elements; at most {MAX_EXPANDED_ELEMENTS:,} are "
                "accepted for such a view, twice the largest tensor of any ShuffleNet"
            )
        self.budget.charge(numel * _output_itemsize(view.root.storage_type), f"a tensor of size {show(tensor.size)}")
        return _tensor_to_numpy(tensor, self.path)


# --------------------------------------------------------------------------
# Public entry point
# --------------------------------------------------------------------------


def load_torch_checkpoint(path: str | os.PathLike) -> object:
    """Return the checkpoint's object tree with every tensor replaced by a C-contiguous numpy array
    (dtype float32/float64/float16/int64/int32/int16/int8/uint8/bool; bfloat16 widened to float32),
    dicts/OrderedDicts as dict (order kept), lists/tuples as is, ints/floats/strings/bytes as is.

    Both ``torch.save`` formats are read (zip and legacy).  Only an allowlist
    of globals is accepted; anything else raises
    :class:`UnsafeCheckpointError`.  Every other problem with the file
    (including a path that is not a regular file, and every limit in the
    module docstring) raises :class:`CheckpointError`.  Errors opening the
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
