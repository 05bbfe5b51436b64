"""weights_convert.torch_pickle refuses code, objects and broken files: always a CheckpointError, nothing run.

torch is used here only to *write* checkpoints (and, as a control, to show plain unpickling would run them).
"""

from __future__ import annotations

import argparse
import builtins
import os
import pickle
import struct
import tarfile
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.torch_checkpoints import (
    FORMATS,
    CallOnLoad,
    StorageId,
    small_checkpoint,
    torch_save,
    write_legacy_checkpoint,
)
from weights_convert.torch_pickle import CheckpointError, UnsafeCheckpointError, load_torch_checkpoint

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
