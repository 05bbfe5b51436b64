"""Tests for weights_convert.torch_pickle: torch-free, allowlist-only checkpoint loading.

torch is used here only to *write* checkpoints (and, as a reference, to read them).
"""

from __future__ import annotations

import argparse
import builtins
import io
import os
import pickle
import struct
import tarfile
import zipfile
from collections import OrderedDict
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from weights_convert.torch_pickle import (
    LEGACY_MAGIC_NUMBER,
    LEGACY_PROTOCOL_VERSION,
    CheckpointError,
    UnsafeCheckpointError,
    load_torch_checkpoint,
)

FORMATS = ["zip", "legacy"]
WEIGHTS_DIR = Path(__file__).resolve().parent.parent / ".." / "shared" / "weights"
MEGVII_FILES = ["ShuffleNetV1_g3_0.5x.pth.tar", "ShuffleNetV1_g8_0.5x.pth.tar"]


# --------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------


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


# --------------------------------------------------------------------------
# round trips
# --------------------------------------------------------------------------


def rich_checkpoint() -> dict[str, object]:
    """One of everything the loader promises to handle."""
    gen = torch.Generator().manual_seed(0)
    base = torch.randn(6, 5, generator=gen)
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3, groups=1), torch.nn.BatchNorm2d(8))
    tensors = {
        "f32": torch.randn(2, 3, generator=gen),
        "f64": torch.randn(4, generator=gen, dtype=torch.float64),
        "f16": torch.randn(3, 2, generator=gen).half(),
        "bf16": torch.randn(7, generator=gen).bfloat16(),
        "i64": torch.randint(-(2**40), 2**40, (5,), generator=gen),
        "i32": torch.randint(-1000, 1000, (2, 2), generator=gen, dtype=torch.int32),
        "i16": torch.randint(-1000, 1000, (3,), generator=gen, dtype=torch.int16),
        "i8": torch.randint(-128, 128, (3,), generator=gen, dtype=torch.int8),
        "u8": torch.randint(0, 256, (3,), generator=gen, dtype=torch.uint8),
        "bool": torch.randint(0, 2, (2, 3), generator=gen).bool(),
        "scalar_f32": torch.tensor(2.5),
        "scalar_i64": torch.tensor(7),
        "scalar_bf16": torch.tensor(-1.25, dtype=torch.bfloat16),
        "empty": torch.zeros(0, 3),
        "transposed": base.t(),
        "row_of_shared": base[2],  # shares base's storage, offset 10
        "column_of_shared": base[:, 1],  # same storage, stride 5
        "stepped": base[1::2, ::3],
        "expanded": torch.arange(3.0).expand(4, 3),  # stride 0
        "permuted": torch.randn(2, 3, 4, generator=gen).permute(2, 0, 1),
        "neg_view": torch._neg_view(torch.arange(4.0)),
        "parameter": torch.nn.Parameter(torch.randn(3, generator=gen)),
    }
    return {
        "state_dict": model.state_dict(),
        "tensors": tensors,
        "same_tensor_twice": [tensors["f32"], tensors["f32"]],
        "tuple": (1, 2.5, "three", None, True),
        "shape": torch.Size([2, 3]),
        "bytes": b"\x00\xffraw",
        "epoch": 3,
        "best_acc": 0.75,
        "arch": "shufflenet_v1",
    }


@pytest.mark.parametrize("fmt", FORMATS)
def test_round_trip_rich_checkpoint(tmp_path: Path, fmt: str) -> None:
    original = rich_checkpoint()
    loaded = load_torch_checkpoint(torch_save(original, tmp_path / "ckpt.pth", fmt))
    assert_same_tree(loaded, original)
    assert loaded["same_tensor_twice"][0] is loaded["same_tensor_twice"][1]


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("protocol", [1, 2, 3, 4, 5])
def test_round_trip_pickle_protocols(tmp_path: Path, fmt: str, protocol: int) -> None:
    original = small_checkpoint()
    path = torch_save(original, tmp_path / "ckpt.pt", fmt, pickle_protocol=protocol)
    assert_same_tree(load_torch_checkpoint(path), original)


def test_accepts_pathlike_and_str(tmp_path: Path) -> None:
    path = torch_save({"w": torch.ones(2)}, tmp_path / "w.pt", "zip")
    for spelling in (path, str(path)):
        np.testing.assert_array_equal(load_torch_checkpoint(spelling)["w"], np.ones(2, np.float32))


DTYPES = [
    torch.float32,
    torch.float64,
    torch.float16,
    torch.bfloat16,
    torch.int64,
    torch.int32,
    torch.int16,
    torch.int8,
    torch.uint8,
    torch.bool,
]
VIEWS = ["contiguous", "transposed", "offset", "stepped", "expanded"]


def make_tensor(dtype: torch.dtype, shape: tuple[int, ...], view: str, seed: int) -> torch.Tensor:
    """A tensor of ``shape`` whose memory layout is ``view`` (maybe non-contiguous)."""
    gen = torch.Generator().manual_seed(seed)

    def fresh(shape: tuple[int, ...]) -> torch.Tensor:
        if dtype.is_floating_point:
            return torch.randn(shape, generator=gen).to(dtype)
        if dtype == torch.bool:
            return torch.randint(0, 2, shape, generator=gen).bool()
        low = 0 if dtype == torch.uint8 else -100
        return torch.randint(low, 100, shape, generator=gen).to(dtype)

    if view == "transposed" and len(shape) >= 2:
        return fresh((shape[1], shape[0], *shape[2:])).transpose(0, 1)
    if view == "offset":
        return fresh((3 + int(np.prod(shape)),))[3:].view(shape)
    if view == "stepped" and len(shape) >= 1:
        return fresh((2 * shape[0] + 1, *shape[1:]))[1::2]
    if view == "expanded" and len(shape) >= 1:
        return fresh((1, *shape[1:])).expand(shape)
    return fresh(shape)


tensor_specs = st.tuples(
    st.sampled_from(DTYPES),
    st.lists(st.integers(0, 4), min_size=0, max_size=4).map(tuple),
    st.sampled_from(VIEWS),
    st.integers(0, 2**31),
)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(specs=st.lists(tensor_specs, min_size=1, max_size=5), fmt=st.sampled_from(FORMATS))
def test_round_trip_random_tensors(tmp_path: Path, specs: list, fmt: str) -> None:
    tensors = {f"t{i}": make_tensor(*spec) for i, spec in enumerate(specs)}
    first = next(iter(tensors.values()))
    original = {"state_dict": tensors, "alias": first, "epoch": 3}  # "alias" shares a storage
    loaded = load_torch_checkpoint(torch_save(original, tmp_path / "random.pth", fmt))
    assert_same_tree(loaded, original)


# --------------------------------------------------------------------------
# the real Megvii ShuffleNetV1 checkpoints (legacy format)
# --------------------------------------------------------------------------


@pytest.mark.parametrize("name", MEGVII_FILES)
def test_megvii_legacy_checkpoints_match_torch_load(name: str) -> None:
    path = WEIGHTS_DIR / name
    if not path.exists():
        pytest.skip(f"{path} not present")
    loaded = load_torch_checkpoint(path)
    reference = torch.load(path, map_location="cpu", weights_only=True)
    assert list(loaded) == ["state_dict"]
    state = loaded["state_dict"]
    assert len(state) == 295
    assert all(key.startswith("module.") for key in state)
    assert_same_tree(loaded, reference)


# --------------------------------------------------------------------------
# refusing code
# --------------------------------------------------------------------------


def _code_payloads(sentinel: Path) -> list[tuple[str, CallOnLoad, tuple[str, ...]]]:
    command = f"open({str(sentinel)!r}, 'w').close()"
    return [
        ("os.system", CallOnLoad(os.system, (f"touch '{sentinel}'",)), ("posix.system", "os.system")),
        ("eval", CallOnLoad(builtins.eval, (command,)), ("builtins.eval",)),
        ("exec", CallOnLoad(builtins.exec, (command,)), ("builtins.exec",)),
    ]


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("payload", ["os.system", "eval", "exec"])
def test_refuses_code_and_runs_nothing(tmp_path: Path, fmt: str, payload: str) -> None:
    sentinel = tmp_path / "SENTINEL"
    ((_, evil, names),) = [p for p in _code_payloads(sentinel) if p[0] == payload]
    path = torch_save({"state_dict": {"w": torch.ones(2)}, "evil": evil}, tmp_path / "evil.pth", fmt)

    with pytest.raises(UnsafeCheckpointError) as info:
        load_torch_checkpoint(path)
    message = str(info.value)
    assert any(name in message for name in names), message
    assert str(path) in message
    assert "torch.save(model.state_dict(), path)" in message
    assert not sentinel.exists()

    # Control: plain unpickling really would have run the payload.
    torch.load(path, weights_only=False)
    assert sentinel.exists()


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize(
    ("value", "forbidden"),
    [
        (argparse.Namespace(lr=0.1, arch="shufflenet"), "argparse.Namespace"),
        (np.arange(3), "multiarray._reconstruct"),
        (torch.nn.Linear(2, 2), "torch.nn.modules.linear.Linear"),
        ({1, 2}, "builtins.set"),
    ],
    ids=["argparse", "numpy", "whole-module", "set"],
)
def test_refuses_non_tensor_objects(tmp_path: Path, fmt: str, value: object, forbidden: str) -> None:
    path = torch_save({"state_dict": {"w": torch.ones(2)}, "extra": value}, tmp_path / "x.pth", fmt)
    with pytest.raises(UnsafeCheckpointError, match=forbidden):
        load_torch_checkpoint(path)


def test_refuses_non_storage_persistent_id(tmp_path: Path) -> None:
    module_pid = StorageId(("module", "MyNet", None, None))
    path = write_legacy_checkpoint(tmp_path / "m.pth", {"model": module_pid}, [])
    with pytest.raises(UnsafeCheckpointError, match="persistent id 'module'"):
        load_torch_checkpoint(path)


def test_unsupported_storage_type_is_a_checkpoint_error(tmp_path: Path) -> None:
    path = torch_save({"c": torch.ones(2, dtype=torch.complex64)}, tmp_path / "c.pth", "zip")
    with pytest.raises(CheckpointError, match="torch.ComplexFloatStorage is not supported") as info:
        load_torch_checkpoint(path)
    assert not isinstance(info.value, UnsafeCheckpointError)


def test_forged_memo_index_is_refused_without_allocating(tmp_path: Path) -> None:
    # LONG_BINPUT with index 2**31: CPython's C unpickler would allocate a 32 GiB memo.
    pickled = b"\x80\x02N" + b"r" + struct.pack("<I", 2**31) + b"."
    with zipfile.ZipFile(tmp_path / "memo.pth", "w") as archive:
        archive.writestr("archive/data.pkl", pickled)
    with pytest.raises(CheckpointError, match="memo index"):
        load_torch_checkpoint(tmp_path / "memo.pth")


# --------------------------------------------------------------------------
# hand-made files: geometry checks, byte order, legacy storage views
# --------------------------------------------------------------------------

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


# --------------------------------------------------------------------------
# truncated and garbage files
# --------------------------------------------------------------------------


@pytest.mark.parametrize("fmt", FORMATS)
def test_truncated_files_raise_checkpoint_error(tmp_path: Path, fmt: str) -> None:
    full = torch_save(small_checkpoint(), tmp_path / "full.pth", fmt).read_bytes()
    load_torch_checkpoint(tmp_path / "full.pth")  # the whole file is fine
    cuts = sorted({0, 1, len(full) - 1, *(len(full) * k // 15 for k in range(1, 15))})
    for cut in cuts:
        path = tmp_path / f"cut{cut}.pth"
        path.write_bytes(full[:cut])
        with pytest.raises(CheckpointError):
            load_torch_checkpoint(path)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(fmt=st.sampled_from(FORMATS), data=st.data())
def test_corrupted_bytes_never_escape_as_other_errors(tmp_path: Path, fmt: str, data: st.DataObject) -> None:
    original = torch_save(small_checkpoint(), tmp_path / "orig.pth", fmt).read_bytes()
    corrupted = bytearray(original)
    for _ in range(data.draw(st.integers(1, 4), label="n_flips")):
        position = data.draw(st.integers(0, len(corrupted) - 1), label="position")
        corrupted[position] = data.draw(st.integers(0, 255), label="value")
    path = tmp_path / "corrupted.pth"
    path.write_bytes(bytes(corrupted))
    try:
        load_torch_checkpoint(path)
    except CheckpointError:
        pass


@pytest.mark.parametrize(
    "content",
    [
        b"",
        b"just some text\nnot a checkpoint at all\n",
        b"cos\nsystem\n(S'echo hi'\ntR.",  # a protocol-0 pickle calling os.system
        pickle.dumps({"a": 1}),  # a plain pickle, no magic number
        bytes(np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8)),
        b"\x80\x02" + bytes(np.random.default_rng(1).integers(0, 256, 300, dtype=np.uint8)),
        b"PK\x03\x04" + bytes(np.random.default_rng(2).integers(0, 256, 300, dtype=np.uint8)),
    ],
    ids=["empty", "text", "pickle-os-system", "plain-pickle", "random", "random-pickle-header", "random-zip-header"],
)
def test_garbage_raises_checkpoint_error(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "garbage.pth"
    path.write_bytes(content)
    with pytest.raises(CheckpointError) as info:
        load_torch_checkpoint(path)
    assert str(path) in str(info.value)


def test_empty_file_message(tmp_path: Path) -> None:
    (tmp_path / "empty.pth").write_bytes(b"")
    with pytest.raises(CheckpointError, match="empty"):
        load_torch_checkpoint(tmp_path / "empty.pth")


def test_tar_file_is_refused(tmp_path: Path) -> None:
    member = tmp_path / "pickle"
    member.write_bytes(b"x")
    with tarfile.open(tmp_path / "old.pth", "w", format=tarfile.PAX_FORMAT) as tar:
        tar.add(member, arcname="pickle")
    with pytest.raises(CheckpointError, match="tar"):
        load_torch_checkpoint(tmp_path / "old.pth")


def test_zip_without_data_pkl_is_refused(tmp_path: Path) -> None:
    with zipfile.ZipFile(tmp_path / "other.zip", "w") as archive:
        archive.writestr("readme.txt", "hello")
    with pytest.raises(CheckpointError, match="data.pkl"):
        load_torch_checkpoint(tmp_path / "other.zip")


def test_missing_file_raises_file_not_found(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        load_torch_checkpoint(tmp_path / "nope.pth")


def test_error_classes() -> None:
    assert issubclass(UnsafeCheckpointError, CheckpointError)
    assert issubclass(CheckpointError, ValueError)
