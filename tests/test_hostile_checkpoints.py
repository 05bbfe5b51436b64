"""Hostile checkpoints: files made to poison, crash or hang the reader and the converter.

Each file is built here by hand (pickle opcodes, zip records; tests/hostile_files.py), small and fast.
Anything that could crash, hang or eat memory on a regression runs in a child process
(tests/hostile_worker.py, through tests/hostile_runner.py) with an address-space cap and a time
limit, so it fails the test instead of the machine.

Memory bombs are in test_hostile_checkpoints_memory.py, fuzzing in test_hostile_checkpoints_fuzz.py.
"""

from __future__ import annotations

import os
import struct
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch

from tests.hostile_files import (
    APPENDS,
    BUILD,
    EMPTY_DICT,
    EMPTY_LIST,
    EMPTY_TUPLE,
    FALSE,
    MARK,
    NONE,
    POP,
    PROTO2,
    REDUCE,
    SETITEM,
    STOP,
    TRUE,
    TUPLE,
    TUPLE1,
    TUPLE2,
    TUPLE3,
    get,
    glob,
    integer,
    one_entry_dict,
    put,
    shared_tuple_dag,
    tensor,
    text,
    write_checkpoint,
    write_zip,
    zip_pid,
)
from tests.hostile_runner import MESSAGE_LIMIT, Worker, assert_refused_cleanly, worker_for_module
from weights_convert import torch_pickle
from weights_convert.torch_pickle import CheckpointError, UnsafeCheckpointError, load_torch_checkpoint


@pytest.fixture(scope="module")
def worker() -> Iterator[Worker]:
    yield from worker_for_module()


# --------------------------------------------------------------------------
# poisoning: BUILD may not touch what the reader resolved
# --------------------------------------------------------------------------

ALLOWED_GLOBALS = [("torch._utils", "_rebuild_tensor_v2"), ("torch._utils", "_rebuild_parameter"), ("torch", "Size"),
                   ("collections", "OrderedDict"), ("torch", "FloatStorage"), ("_codecs", "encode")]
NEGATE_BY_DEFAULT = (FALSE + NONE + EMPTY_DICT + text("neg") + TRUE + SETITEM + TUPLE3)  # (False, None, {'neg': True})


@pytest.mark.parametrize("fmt", ["zip", "legacy"])
@pytest.mark.parametrize("target", ALLOWED_GLOBALS, ids=lambda t: ".".join(t))
@pytest.mark.parametrize("state", ["slots", "dict"])
def test_build_on_an_allowed_global_is_refused_and_poisons_nothing(tmp_path: Path, fmt: str, target, state) -> None:
    # (None, {'__defaults__': ...}) sets attributes through setattr; {'__defaults__': ...} through __dict__
    attributes = EMPTY_DICT + text("__defaults__") + NEGATE_BY_DEFAULT + SETITEM
    state_ops = NONE + attributes + TUPLE2 if state == "slots" else attributes
    poison = PROTO2 + glob(*target) + state_ops + BUILD + POP + EMPTY_DICT + STOP
    path = write_checkpoint(tmp_path / "poison.pth", fmt, poison)
    good = tmp_path / "good.pth"
    torch.save({"w": torch.arange(3.0)}, good)
    stand_ins = {name: (getattr(f, "__defaults__", None), dict(getattr(f, "__dict__", {})))
                 for name, f in torch_pickle._ALLOWED_GLOBALS.items()}
    try:
        with pytest.raises(UnsafeCheckpointError, match="BUILD"):
            load_torch_checkpoint(path)
        np.testing.assert_array_equal(load_torch_checkpoint(good)["w"], [0.0, 1.0, 2.0])
        after = {name: (getattr(f, "__defaults__", None), dict(getattr(f, "__dict__", {})))
                 for name, f in torch_pickle._ALLOWED_GLOBALS.items()}
        assert after == stand_ins
    finally:  # a regression must not poison the rest of the test session
        for name, (defaults, attributes_before) in stand_ins.items():
            stand_in = torch_pickle._ALLOWED_GLOBALS[name]
            if hasattr(stand_in, "__defaults__"):
                stand_in.__defaults__ = defaults
            if hasattr(stand_in, "__dict__") and not isinstance(stand_in, type):
                stand_in.__dict__.clear()
                stand_in.__dict__.update(attributes_before)


def test_ordered_dict_metadata_is_still_accepted(tmp_path: Path) -> None:
    # what state_dict() pickles: OrderedDict() with BUILD {'_metadata': OrderedDict(...)}
    metadata = EMPTY_DICT + text("_metadata") + glob("collections", "OrderedDict") + EMPTY_TUPLE + REDUCE + SETITEM
    path = write_zip(tmp_path / "ok.pth", PROTO2 + glob("collections", "OrderedDict") + EMPTY_TUPLE + REDUCE
                     + metadata + BUILD + STOP)
    assert load_torch_checkpoint(path) == {}


# --------------------------------------------------------------------------
# crashes and hangs
# --------------------------------------------------------------------------


@pytest.mark.parametrize("fmt", ["zip", "legacy"])
@pytest.mark.parametrize("depth", [10**6, 400_000])
def test_deeply_nested_tuple_key_does_not_crash(tmp_path: Path, worker: Worker, fmt: str, depth: int) -> None:
    nested = EMPTY_TUPLE + TUPLE1 * depth  # ((((...),),),): hashing it recursed until the C stack overflowed
    path = write_checkpoint(tmp_path / "deep.pth", fmt, one_entry_dict(nested, NONE))
    assert_refused_cleanly(worker.ask("load", path))


def test_deeply_nested_value_is_refused(tmp_path: Path, worker: Worker) -> None:
    nested = EMPTY_LIST + (MARK + EMPTY_LIST) * 100_000 + APPENDS * 100_000  # [[[[...]]]] as a value
    path = write_zip(tmp_path / "deep.pth", one_entry_dict(text("state_dict"), nested), deflate=True)
    assert_refused_cleanly(worker.ask("convert", path, tmp_path / "out.npz"), "nested")


@pytest.mark.parametrize("fmt", ["zip", "legacy"])
def test_shared_tuple_as_key_is_refused_without_hashing(tmp_path: Path, worker: Worker, fmt: str) -> None:
    path = write_checkpoint(tmp_path / "dag.pth", fmt, one_entry_dict(shared_tuple_dag(60), NONE))
    assert path.stat().st_size < 2000
    assert_refused_cleanly(worker.ask("load", path), "key")


@pytest.mark.parametrize("where", ["size", "stride", "storage key", "storage count", "offset"])
def test_shared_tuple_in_an_error_message_is_shown_briefly(tmp_path: Path, worker: Worker, where: str) -> None:
    dag = shared_tuple_dag(60)
    pid = zip_pid("0" if where != "storage key" else "", integer(6) if where != "storage count" else dag)
    if where == "storage key":
        pid = MARK + text("storage") + glob("torch", "FloatStorage") + dag + text("cpu") + integer(6) + TUPLE
    args = {"offset": integer(0), "size": integer(2) + TUPLE1, "stride": integer(1) + TUPLE1}
    if where in args:
        args[where] = dag
    ops = tensor(pid, args["offset"], args["size"], args["stride"])
    path = write_zip(tmp_path / "dag.pth", one_entry_dict(text("w"), ops), {"0": bytes(24)})
    assert_refused_cleanly(worker.ask("load", path))


def test_many_references_to_one_string_make_a_short_message(tmp_path: Path, worker: Worker) -> None:
    # a 4 KB string, then a tensor size of 300,000 references to it: a 1.2 GB repr, from a ~3 KB file
    size = text("x" * 4096) + put(0) + POP + MARK + get(0) * 300_000 + TUPLE
    ops = tensor(zip_pid("0", integer(6)), integer(0), size, integer(1) + TUPLE1)
    path = write_zip(tmp_path / "refs.pth", one_entry_dict(text("w"), ops), {"0": bytes(24)}, deflate=True)
    assert path.stat().st_size < 10_000
    assert_refused_cleanly(worker.ask("load", path))


def test_huge_storage_count_is_refused_in_one_line(tmp_path: Path) -> None:
    ops = tensor(zip_pid("0", integer(10**5000)), integer(0), integer(2) + TUPLE1, integer(1) + TUPLE1)
    path = write_zip(tmp_path / "big-int.pth", one_entry_dict(text("w"), ops), {"0": bytes(24)})
    with pytest.raises(CheckpointError, match="bit integer") as info:
        load_torch_checkpoint(path)
    assert len(str(info.value)) < MESSAGE_LIMIT


def test_named_pipe_is_refused_without_blocking(tmp_path: Path, worker: Worker) -> None:
    fifo = tmp_path / "ckpt.pth"
    os.mkfifo(fifo)
    assert_refused_cleanly(worker.ask("convert", fifo, tmp_path / "out.npz"), "not a regular file")


def test_folder_is_refused(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match="not a regular file"):
        load_torch_checkpoint(tmp_path)


# --------------------------------------------------------------------------
# types a state dict does not have
# --------------------------------------------------------------------------


@pytest.mark.parametrize("key", [EMPTY_TUPLE, b"C\x01x", NONE, b"G" + struct.pack(">d", 1.5)],
                         ids=["tuple", "bytes", "None", "float"])
def test_dict_keys_must_be_strings_or_integers(tmp_path: Path, key: bytes) -> None:
    with pytest.raises(CheckpointError, match="a dict key is a"):
        load_torch_checkpoint(write_zip(tmp_path / "key.pth", b"\x80\x03" + one_entry_dict(key, NONE)[2:]))


@pytest.mark.parametrize("opcode", [b"\x81", b"\x92", b"i", b"o", b"\x82"], ids=["NEWOBJ", "NEWOBJ_EX", "INST", "OBJ",
                                                                                  "EXT1"])
def test_object_building_opcodes_are_refused(tmp_path: Path, opcode: bytes) -> None:
    pickled = b"\x80\x04" + glob("collections", "OrderedDict") + EMPTY_TUPLE + opcode + STOP
    with pytest.raises(CheckpointError):
        load_torch_checkpoint(write_zip(tmp_path / "obj.pth", pickled))
