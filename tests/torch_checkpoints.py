"""Helpers for the torch_pickle tests: write checkpoints with torch, or by hand, and compare what loads.

torch is used only to *write* checkpoints (and, as a reference, to read them).  The hand-made
writers pickle :class:`StorageId` and :class:`TensorCall` objects as torch's persistent ids and
tensor calls, so a test can write any offset, size, stride or storage it likes.
"""

from __future__ import annotations

import io
import pickle
import struct
import zipfile
from collections import OrderedDict
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from weights_convert.torch_pickle import LEGACY_MAGIC_NUMBER, LEGACY_PROTOCOL_VERSION

FORMATS = ["zip", "legacy"]


def torch_save(obj: object, path: Path, fmt: str, **kwargs: object) -> Path:
    """torch.save in the zip ("zip") or legacy non-zip ("legacy") format."""
    if fmt == "legacy":
        kwargs["_use_new_zipfile_serialization"] = False
    torch.save(obj, path, **kwargs)
    return path


def expected_array(tensor: torch.Tensor) -> np.ndarray:
    """What load_torch_checkpoint should return for ``tensor``."""
    tensor = tensor.detach().resolve_neg()
    if tensor.dtype == torch.bfloat16:
        tensor = tensor.float()
    return tensor.numpy()


def assert_same_tree(loaded: object, original: object) -> None:
    """Loaded tree matches the torch object tree exactly (types, order, dtypes, values)."""
    if isinstance(original, torch.Tensor):
        want = expected_array(original)
        assert isinstance(loaded, np.ndarray)
        assert loaded.flags["C_CONTIGUOUS"] and loaded.flags["WRITEABLE"]
        assert loaded.dtype == want.dtype
        assert loaded.shape == want.shape
        np.testing.assert_array_equal(loaded, want, strict=True)
    elif isinstance(original, dict):
        assert type(loaded) is dict
        assert list(loaded) == list(original)
        for key in original:
            assert_same_tree(loaded[key], original[key])
    elif isinstance(original, (list, tuple)):
        assert type(loaded) is type(original) or isinstance(original, torch.Size)
        assert len(loaded) == len(original)
        for got, want in zip(loaded, original, strict=True):
            assert_same_tree(got, want)
    else:
        assert type(loaded) is type(original)
        assert loaded == original


class CallOnLoad:
    """Pickles as ``func(*args)``: what a malicious checkpoint would contain."""

    def __init__(self, func: Callable[..., object], args: tuple[object, ...]) -> None:
        self.func = func
        self.args = args

    def __reduce__(self) -> tuple[Callable[..., object], tuple[object, ...]]:
        return self.func, self.args


class StorageId:
    """Pickled by the hand-made writers below as the persistent id ``pid``."""

    def __init__(self, pid: tuple[object, ...]) -> None:
        self.pid = pid


class TensorCall:
    """Pickles as ``torch._utils._rebuild_tensor_v2(storage, offset, size, stride, ...)``."""

    def __init__(self, storage: StorageId, offset: object, size: object, stride: object) -> None:
        self.args = (storage, offset, size, stride, False, OrderedDict())

    def __reduce__(self) -> tuple[Callable[..., object], tuple[object, ...]]:
        return torch._utils._rebuild_tensor_v2, self.args


class _PidPickler(pickle.Pickler):
    def persistent_id(self, obj: object) -> object:
        return obj.pid if isinstance(obj, StorageId) else None


def pickle_with_pids(obj: object, protocol: int = 2) -> bytes:
    buffer = io.BytesIO()
    _PidPickler(buffer, protocol=protocol).dump(obj)
    return buffer.getvalue()


def write_zip_checkpoint(
    path: Path, obj: object, storages: dict[str, bytes], byteorder: bytes | None = b"little"
) -> Path:
    """Hand-made zip checkpoint: ``obj`` may hold StorageId / TensorCall objects."""
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("archive/data.pkl", pickle_with_pids(obj))
        if byteorder is not None:
            archive.writestr("archive/byteorder", byteorder)
        for key, raw in storages.items():
            archive.writestr(f"archive/data/{key}", raw)
        archive.writestr("archive/version", b"3\n")
    return path


def write_legacy_checkpoint(path: Path, obj: object, storages: list[tuple[str, int, bytes]]) -> Path:
    """Hand-made legacy checkpoint; ``storages`` are (key, element count, raw bytes)."""
    sys_info = {"protocol_version": 1001, "little_endian": True, "type_sizes": {"short": 2, "int": 4, "long": 4}}
    with open(path, "wb") as f:
        for header in (LEGACY_MAGIC_NUMBER, LEGACY_PROTOCOL_VERSION, sys_info):
            pickle.dump(header, f, protocol=2)
        f.write(pickle_with_pids(obj))
        pickle.dump([key for key, _, _ in storages], f, protocol=2)
        for _key, count, raw in storages:
            f.write(struct.pack("<q", count) + raw)
    return path


def small_checkpoint() -> dict[str, object]:
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4), torch.nn.Linear(5, 2))
    return {"state_dict": model.state_dict(), "epoch": 3, "note": "hello"}
