"""Hostile checkpoints that try to exhaust memory: zip bombs, huge declared sizes, stride-0 views.

Every file runs in the child process (tests/hostile_runner.py), which must refuse it cleanly
without its peak memory passing PEAK_RSS_LIMIT_MB.
"""

from __future__ import annotations

import zlib
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch

from tests.hostile_files import (
    APPENDS,
    EMPTY_LIST,
    EMPTY_SET,
    MARK,
    NONE,
    PROTO2,
    STOP,
    TUPLE1,
    deflated_zeros,
    integer,
    one_entry_dict,
    small_state_dict,
    tensor,
    text,
    write_raw_zip,
    write_zip,
    zip_pid,
)
from tests.hostile_runner import Worker, assert_refused_cleanly, worker_for_module
from weights_convert.torch_pickle import CheckpointError, load_torch_checkpoint


@pytest.fixture(scope="module")
def worker() -> Iterator[Worker]:
    yield from worker_for_module()


# --------------------------------------------------------------------------
# memory
# --------------------------------------------------------------------------


def test_huge_deflated_data_pkl_is_refused_before_reading(tmp_path: Path, worker: Worker) -> None:
    stream, crc = deflated_zeros(512)  # 512 MiB in a 0.5 MB file
    path = write_raw_zip(tmp_path / "bomb.pth", [("archive/data.pkl", stream, 512 * 2**20, crc)])
    assert path.stat().st_size < 2**20
    assert_refused_cleanly(worker.ask("load", path), "data.pkl declares")


def test_huge_deflated_storage_is_refused_before_reading(tmp_path: Path, worker: Worker) -> None:
    numel = 128 * 2**20  # 512 MiB of float32
    ops = tensor(zip_pid("0", integer(numel)), integer(0), integer(4) + TUPLE1, integer(1) + TUPLE1)
    pickled = one_entry_dict(text("w"), ops)
    stream, crc = deflated_zeros(512)
    small = zlib.compressobj(9, zlib.DEFLATED, -15)
    members = [("archive/data.pkl", small.compress(pickled) + small.flush(), len(pickled), zlib.crc32(pickled)),
               ("archive/data/0", stream, numel * 4, crc)]
    path = write_raw_zip(tmp_path / "bomb.pth", members)
    assert_refused_cleanly(worker.ask("load", path), "bytes a checkpoint of this size may use")


def test_millions_of_empty_sets_are_refused(tmp_path: Path, worker: Worker) -> None:
    pickled = b"\x80\x04" + EMPTY_LIST + MARK + EMPTY_SET * 5_000_000 + APPENDS + STOP
    path = write_zip(tmp_path / "sets.pth", pickled, deflate=True)
    assert path.stat().st_size < 50_000
    assert_refused_cleanly(worker.ask("load", path), "set")


def test_too_many_opcodes_are_refused(tmp_path: Path) -> None:
    pickled = PROTO2 + EMPTY_LIST + MARK + NONE * 600_000 + APPENDS + STOP
    with pytest.raises(CheckpointError, match="opcodes"):
        load_torch_checkpoint(write_zip(tmp_path / "many.pth", pickled, deflate=True))


def test_stride_zero_classifier_cannot_declare_millions_of_classes(tmp_path: Path, worker: Worker) -> None:
    state = small_state_dict()
    classes = 5_000_000  # 960 MB of float32 from a 48-element storage
    state["fc.weight"] = state["fc.weight"][:1].expand(classes, 48)
    state["fc.bias"] = state["fc.bias"][:1].expand(classes)
    path = tmp_path / "wide.pth"
    torch.save(state, path)
    assert path.stat().st_size < 100_000
    assert_refused_cleanly(worker.ask("convert", path, tmp_path / "out.npz"), "stride 0")


def test_small_expanded_views_still_load(tmp_path: Path) -> None:
    path = tmp_path / "expanded.pth"
    torch.save({"e": torch.arange(3.0).expand(1000, 3)}, path)
    np.testing.assert_array_equal(load_torch_checkpoint(path)["e"], np.tile(np.arange(3.0, dtype=np.float32),
                                                                             (1000, 1)))


def test_thousands_of_stages_are_refused_quickly(tmp_path: Path, worker: Worker) -> None:
    # 20,000 keys stage2.0.w ... stage20001.0.w viewing one storage: finding the stages took a scan of
    # every key per stage (minutes)
    state = small_state_dict()
    one = torch.zeros(1)
    state.update({f"stage{i}.0.w": one for i in range(2, 20_002)})
    path = tmp_path / "stages.pth"
    torch.save(state, path)
    assert_refused_cleanly(worker.ask("convert", path, tmp_path / "out.npz"))
