"""The restricted unpickler: runs a checkpoint's pickle as data, never as code.

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

So the reader does not use the pickle machinery at all.
:mod:`pickletools` decodes the opcodes (it only parses bytes), and
:class:`_SafeUnpickler` interprets the few that a checkpoint needs:
constants, tuples, lists, dicts with string or integer keys, the memo, a
short allowlist of globals (answered with *our own* stand-ins from
:mod:`.allowlist`; no import, no attribute lookup by a name from the file)
and calls of those stand-ins.  ``BUILD`` is accepted only on an
``OrderedDict`` the reader itself made, and its state is dropped.  Any other
global is refused with :class:`~.errors.UnsafeCheckpointError`.  Nothing
from the file is ever executed; the stand-ins only record their arguments,
and every tensor is rebuilt later (:mod:`.tensors`) as a numpy array after
its offset, size and stride have been checked against the storage length.
"""

from __future__ import annotations

import pickletools
from typing import IO, Any

from ..messages import show
from .allowlist import _CALLABLE, _describe, _find_class, _OrderedDictStandIn, _set_item
from .errors import _RESAVE_ADVICE, CheckpointError, UnsafeCheckpointError, _Malformed, _reading
from .limits import MAX_INT_BITS, MAX_PICKLE_OPS
from .storages import _persistent_load, _RootStorage

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
        self.stack.append(_find_class(module, name, self.path))

    def _op_STACK_GLOBAL(self, _arg: None) -> None:
        module, name = self._pop_n(2)
        if type(module) is not str or type(name) is not str:
            raise _Malformed("STACK_GLOBAL needs a module name and a name")
        self.stack.append(_find_class(module, name, self.path))

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
        self.stack.append(_persistent_load(pid, self.storage_format, self.roots, self.path))

    def _op_BINPERSID(self, _arg: None) -> None:
        self.stack.append(_persistent_load(self._pop(), self.storage_format, self.roots, self.path))


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
