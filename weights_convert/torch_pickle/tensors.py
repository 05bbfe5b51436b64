"""From stand-ins to numpy arrays: check every tensor against its storage, then build it.

After unpickling, the object tree still holds stand-ins (:mod:`.storages`,
:mod:`.allowlist`).  :class:`_Resolver` walks it once and replaces each
tensor by a C-contiguous native-endian numpy array, after its offset, size
and stride have been checked against the storage length and its size
charged to the memory budget, and each ``OrderedDict`` stand-in by a dict.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from ..messages import show
from .allowlist import _describe, _OrderedDictStandIn
from .errors import CheckpointError
from .limits import _MAX_NDIM, MAX_DEPTH, MAX_EXPANDED_ELEMENTS, _Budget
from .storages import _is_count, _StorageType, _StorageView, _TensorRef


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
