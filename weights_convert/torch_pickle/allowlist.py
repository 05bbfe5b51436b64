"""The allowlist: the few globals a checkpoint may name, and our stand-ins for them.

A pickle names functions and classes by module and name (a *global*).  The
reader never imports them: each allowed name is answered with a stand-in
defined here that only records its arguments (``_rebuild_tensor_v2``),
passes its data through (``_rebuild_parameter``), or builds plain data
(``OrderedDict``, ``torch.Size``, ``_codecs.encode``).  The storage types
(:data:`~.storages._STORAGE_TYPES`) are only named in persistent ids.
Every other global is refused with :class:`~.errors.UnsafeCheckpointError`.
"""

from __future__ import annotations

import _compat_pickle
from collections.abc import Callable

from ..messages import show
from .errors import _RESAVE_ADVICE, CheckpointError, UnsafeCheckpointError, _Malformed
from .storages import _STORAGE_TYPES, _TensorRef


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


def _find_class(module: str, name: str, path: str) -> object:
    """Return our stand-in for ``module.name``, or refuse it."""
    module, name = _python3_name(module, name)
    stand_in = _ALLOWED_GLOBALS.get((module, name))
    if stand_in is not None:
        return stand_in
    if module == "torch" and name.endswith("Storage"):
        supported = ", ".join(f"torch.{n}" for n in _STORAGE_TYPES)
        raise CheckpointError(
            f"{path}: tensor storage type torch.{name} is not supported (supported: {supported})"
        )
    raise UnsafeCheckpointError(
        f"{path}: refusing to load: the checkpoint references the Python global "
        f"'{module}.{name}', which is not on the allowlist, and loading it could run code "
        f"from the file. {_RESAVE_ADVICE}"
    )
