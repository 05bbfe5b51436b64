"""weights_convert.torch_pickle on hand-made files: tensor geometry checks, byte order, legacy storage views.

The files are written by tests/torch_checkpoints.py's writers, so a test chooses every offset, size,
stride, storage record and key list; torch reads them as the reference where it can.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from tests.torch_checkpoints import (
    StorageId,
    TensorCall,
    assert_same_tree,
    write_legacy_checkpoint,
    write_zip_checkpoint,
)
from weights_convert.torch_pickle import CheckpointError, load_torch_checkpoint

FLOATS = np.arange(6, dtype="<f4")  # the one storage used below: 6 float32 elements


def zip_with_one_tensor(path: Path, offset: object, size: object, stride: object) -> Path:
    storage = StorageId(("storage", torch.FloatStorage, "0", "cpu", 6))
    return write_zip_checkpoint(path, {"t": TensorCall(storage, offset, size, stride)}, {"0": FLOATS.tobytes()})


def test_hand_made_zip_checkpoint_matches_torch(tmp_path: Path) -> None:
    path = zip_with_one_tensor(tmp_path / "ok.pth", 1, (2, 2), (3, 1))
    loaded = load_torch_checkpoint(path)["t"]
    np.testing.assert_array_equal(loaded, [[1, 2], [4, 5]])
    np.testing.assert_array_equal(loaded, torch.load(path, weights_only=True)["t"].numpy())


@pytest.mark.parametrize(
    ("offset", "size", "stride"),
    [
        (6, (1,), (1,)),  # offset at the end
        (0, (7,), (1,)),  # one element too many
        (0, (2, 3), (4, 1)),  # last element is 4 + 2 = 6
        (5, (2,), (0,)),  # fine...
        (2, (3, 2), (2, 0)),  # ...and 2 + 4 = 6 is not
        (0, (2,), (-1,)),  # negative stride
        (-1, (1,), (1,)),  # negative offset
        (0, (-2,), (1,)),  # negative size
        (0, (2, 2), (1,)),  # size/stride length mismatch
        (0, [2], [1]),  # lists instead of tuples
        (0, (2.0,), (1,)),  # float size
        (0, (10**30,), (0,)),  # absurd size
        (0, (1,) * 65, (1,) * 65),  # too many dimensions
    ],
)
def test_tensor_geometry_outside_storage_is_refused(
    tmp_path: Path, offset: object, size: object, stride: object
) -> None:
    path = zip_with_one_tensor(tmp_path / "bad.pth", offset, size, stride)
    if (offset, size, stride) == (5, (2,), (0,)):
        np.testing.assert_array_equal(load_torch_checkpoint(path)["t"], [5, 5])
        return
    with pytest.raises(CheckpointError, match="tensor"):
        load_torch_checkpoint(path)


def test_storage_record_of_wrong_length_is_refused(tmp_path: Path) -> None:
    storage = StorageId(("storage", torch.FloatStorage, "0", "cpu", 6))
    path = write_zip_checkpoint(tmp_path / "short.pth", {"t": TensorCall(storage, 0, (6,), (1,))}, {"0": b"\0" * 20})
    with pytest.raises(CheckpointError, match="holds 20 bytes, expected 24"):
        load_torch_checkpoint(path)


def test_missing_storage_record_is_refused(tmp_path: Path) -> None:
    storage = StorageId(("storage", torch.FloatStorage, "0", "cpu", 6))
    path = write_zip_checkpoint(tmp_path / "missing.pth", {"t": TensorCall(storage, 0, (6,), (1,))}, {})
    with pytest.raises(CheckpointError, match="missing"):
        load_torch_checkpoint(path)


def test_big_endian_zip_is_byteswapped(tmp_path: Path) -> None:
    values = {
        "f32": np.linspace(-3, 3, 6, dtype="<f4"),
        "i64": np.array([1, -2, 2**40], dtype="<i8"),
        "f16": np.array([0.5, -1.5], dtype="<f2"),
        "bf16": np.array([0x3FC0, 0xC000], dtype="<u2"),  # 1.5, -2.0
    }
    storage_types = {
        "f32": torch.FloatStorage,
        "i64": torch.LongStorage,
        "f16": torch.HalfStorage,
        "bf16": torch.BFloat16Storage,
    }
    obj = {}
    for key, array in values.items():
        storage = StorageId(("storage", storage_types[key], key, "cpu", array.size))
        obj[key] = TensorCall(storage, 0, array.shape, (1,))
    raw = {key: array.astype(array.dtype.newbyteorder(">")).tobytes() for key, array in values.items()}
    path = write_zip_checkpoint(tmp_path / "big.pth", obj, raw, byteorder=b"big")

    loaded = load_torch_checkpoint(path)
    reference = torch.load(path, weights_only=True)
    assert_same_tree(loaded, reference)
    np.testing.assert_array_equal(loaded["f32"], values["f32"])
    np.testing.assert_array_equal(loaded["bf16"], np.array([1.5, -2.0], np.float32))
    assert loaded["i64"].dtype == np.dtype("int64")  # native order


def test_zip_without_byteorder_record_is_little_endian(tmp_path: Path) -> None:
    storage = StorageId(("storage", torch.FloatStorage, "0", "cpu", 6))
    obj = {"t": TensorCall(storage, 0, (6,), (1,))}
    path = write_zip_checkpoint(tmp_path / "old.pth", obj, {"0": FLOATS.tobytes()}, byteorder=None)
    np.testing.assert_array_equal(load_torch_checkpoint(path)["t"], FLOATS)


def test_unknown_byteorder_is_refused(tmp_path: Path) -> None:
    path = write_zip_checkpoint(tmp_path / "odd.pth", {}, {}, byteorder=b"middle")
    with pytest.raises(CheckpointError, match="byte order"):
        load_torch_checkpoint(path)


def test_legacy_storage_views_match_torch(tmp_path: Path) -> None:
    # Old torch versions pickled storage *views*: a window [offset, offset + numel) of a root storage.
    root = np.arange(10, dtype="<f4")
    view_a = StorageId(("storage", torch.FloatStorage, "root", "cpu", 10, ("view_a", 2, 5)))
    view_b = StorageId(("storage", torch.FloatStorage, "root", "cpu", 10, ("view_b", 6, 4)))
    obj = {"a": TensorCall(view_a, 1, (2, 2), (2, 1)), "b": TensorCall(view_b, 0, (4,), (1,))}
    path = write_legacy_checkpoint(tmp_path / "views.pth", obj, [("root", 10, root.tobytes())])

    loaded = load_torch_checkpoint(path)
    np.testing.assert_array_equal(loaded["a"], [[3, 4], [5, 6]])
    np.testing.assert_array_equal(loaded["b"], [6, 7, 8, 9])
    reference = torch.load(path, weights_only=False)
    assert_same_tree(loaded, reference)


def test_legacy_tensor_may_not_leave_its_view(tmp_path: Path) -> None:
    root = np.arange(10, dtype="<f4")
    view = StorageId(("storage", torch.FloatStorage, "root", "cpu", 10, ("v", 2, 3)))
    path = write_legacy_checkpoint(
        tmp_path / "views.pth", {"a": TensorCall(view, 0, (4,), (1,))}, [("root", 10, root.tobytes())]
    )
    with pytest.raises(CheckpointError, match="only 3 elements"):
        load_torch_checkpoint(path)


@pytest.mark.parametrize(
    ("keys", "count"),
    [([], 6), (["0", "0"], 6), (["0", "other"], 6), (["0"], 5)],
    ids=["no-keys", "duplicate", "unknown", "wrong-count"],
)
def test_legacy_key_list_and_counts_must_match(tmp_path: Path, keys: list[str], count: int) -> None:
    storage = StorageId(("storage", torch.FloatStorage, "0", "cpu", 6, None))
    storages = [(key, count, FLOATS.tobytes()) for key in keys]
    path = write_legacy_checkpoint(tmp_path / "keys.pth", {"t": TensorCall(storage, 0, (6,), (1,))}, storages)
    with pytest.raises(CheckpointError):
        load_torch_checkpoint(path)
