"""Hostile checkpoints: files made to poison, crash, hang or exhaust the reader and the converter.

Each file is built here by hand (pickle opcodes, zip records), small and fast. Anything that could
crash, hang or eat memory on a regression runs in a child process (tests/hostile_worker.py) with
an address-space cap and a time limit, so it fails the test instead of the machine.

The fuzz tests mutate small valid checkpoints of both torch formats. The default run is short;
``NPSHUFFLE_FUZZ=1 python -m pytest -m fuzz tests/test_hostile_checkpoints.py`` runs the long one
(``NPSHUFFLE_FUZZ_EXAMPLES``, default 2000, examples per format).
"""

from __future__ import annotations

import io
import json
import os
import pickle
import pickletools
import select
import struct
import subprocess
import sys
import zipfile
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from npshuffle.archs import V2Spec
from npshuffle.training.torch_ref import build_torch_model, randomize_
from tests.conftest import REPO
from weights_convert import torch_pickle
from weights_convert.torch_pickle import (
    LEGACY_MAGIC_NUMBER,
    LEGACY_PROTOCOL_VERSION,
    CheckpointError,
    UnsafeCheckpointError,
    load_torch_checkpoint,
)

MESSAGE_LIMIT = 500  # characters an error message may have
WORKER_MEMORY_MB = 1024  # the child's address-space cap (it needs ~170 MB to start)
PEAK_RSS_LIMIT_MB = 400  # what no hostile file may make it use
TIMEOUT_S = 30  # per file; a good small checkpoint converts in well under a second

# --------------------------------------------------------------------------
# pickle opcodes, by hand
# --------------------------------------------------------------------------

PROTO2 = b"\x80\x02"
STOP, NONE, TRUE, FALSE = b".", b"N", b"\x88", b"\x89"
MARK, POP, EMPTY_DICT, EMPTY_LIST, EMPTY_TUPLE, EMPTY_SET = b"(", b"0", b"}", b"]", b")", b"\x8f"
TUPLE, TUPLE1, TUPLE2, TUPLE3 = b"t", b"\x85", b"\x86", b"\x87"
SETITEM, APPENDS, REDUCE, BUILD, BINPERSID = b"s", b"e", b"R", b"b", b"Q"


def glob(module: str, name: str) -> bytes:
    return b"c" + f"{module}\n{name}\n".encode()


def text(value: str) -> bytes:
    raw = value.encode()
    return b"X" + struct.pack("<I", len(raw)) + raw


def integer(value: int) -> bytes:
    raw = value.to_bytes((value.bit_length() + 8) // 8, "little", signed=True)
    return b"\x8b" + struct.pack("<I", len(raw)) + raw  # LONG4


def put(index: int) -> bytes:
    return b"r" + struct.pack("<I", index)


def get(index: int) -> bytes:
    return b"j" + struct.pack("<I", index)


def shared_tuple_dag(levels: int) -> bytes:
    """t0 = (); t(i+1) = (t(i), t(i)): a 2**levels-leaf tree in a few bytes per level (memo index i)."""
    ops = EMPTY_TUPLE + put(0) + POP
    for i in range(levels):
        ops += get(i) + get(i) + TUPLE2 + put(i + 1) + POP
    return ops + get(levels)


def tensor(storage_pid: bytes, offset: bytes, size: bytes, stride: bytes) -> bytes:
    """_rebuild_tensor_v2(storage, offset, size, stride, False, OrderedDict())"""
    hooks = glob("collections", "OrderedDict") + EMPTY_TUPLE + REDUCE
    return (glob("torch._utils", "_rebuild_tensor_v2") + MARK + storage_pid + BINPERSID + offset + size + stride
            + FALSE + hooks + TUPLE + REDUCE)


def zip_pid(key: str, numel: bytes, storage_type: str = "FloatStorage") -> bytes:
    return MARK + text("storage") + glob("torch", storage_type) + text(key) + text("cpu") + numel + TUPLE


def one_entry_dict(key: bytes, value: bytes) -> bytes:
    return PROTO2 + EMPTY_DICT + key + value + SETITEM + STOP


# --------------------------------------------------------------------------
# container files, by hand
# --------------------------------------------------------------------------


def write_zip(path: Path, data_pkl: bytes, storages: dict[str, bytes] | None = None, deflate: bool = False) -> Path:
    method = zipfile.ZIP_DEFLATED if deflate else zipfile.ZIP_STORED
    with zipfile.ZipFile(path, "w", compression=method) as archive:
        archive.writestr("archive/data.pkl", data_pkl)
        archive.writestr("archive/byteorder", b"little")
        for key, raw in (storages or {}).items():
            archive.writestr(f"archive/data/{key}", raw)
    return path


def write_legacy(path: Path, main_pkl: bytes, storages: list[tuple[str, int, bytes]] = ()) -> Path:
    sys_info = {"protocol_version": 1001, "little_endian": True, "type_sizes": {"short": 2, "int": 4, "long": 4}}
    with open(path, "wb") as f:
        for header in (LEGACY_MAGIC_NUMBER, LEGACY_PROTOCOL_VERSION, sys_info):
            pickle.dump(header, f, protocol=2)
        f.write(main_pkl)
        pickle.dump([key for key, _, _ in storages], f, protocol=2)
        for _key, count, raw in storages:
            f.write(struct.pack("<q", count) + raw)
    return path


def write_checkpoint(path: Path, fmt: str, main_pkl: bytes, deflate: bool = True) -> Path:
    return write_zip(path, main_pkl, deflate=deflate) if fmt == "zip" else write_legacy(path, main_pkl)


def deflated_zeros(mib: int) -> tuple[bytes, int]:
    """A raw deflate stream of ``mib`` MiB of zero bytes (about 1 KB per MiB) and its CRC-32, made in
    a fraction of a second: one fully flushed block is self-contained, so it can be repeated."""
    compressor = zlib.compressobj(9, zlib.DEFLATED, -15)
    block = compressor.compress(bytes(2**20)) + compressor.flush(zlib.Z_FULL_FLUSH)
    crc = 0
    for _ in range(mib):
        crc = zlib.crc32(bytes(2**20), crc)
    return block * mib + compressor.flush(), crc


def write_raw_zip(path: Path, members: list[tuple[str, bytes, int, int]]) -> Path:
    """A zip of already-deflated members: (name, raw deflate stream, uncompressed size, CRC-32)."""
    out, central = io.BytesIO(), io.BytesIO()
    for name, stream, size, crc in members:
        offset = out.tell()
        fields = struct.pack("<HHHHHIIIHH", 20, 0, 8, 0, 0x21, crc, len(stream), size, len(name), 0)
        out.write(b"PK\x03\x04" + fields + name.encode() + stream)
        central.write(b"PK\x01\x02" + struct.pack("<H", 20) + fields + struct.pack("<HHHII", 0, 0, 0, 0, offset)
                      + name.encode())
    directory = central.getvalue()
    end = struct.pack("<HHHHIIH", 0, 0, len(members), len(members), len(directory), out.tell(), 0)
    path.write_bytes(out.getvalue() + directory + b"PK\x05\x06" + end)
    return path


# --------------------------------------------------------------------------
# the child process
# --------------------------------------------------------------------------


class Worker:
    """tests/hostile_worker.py, restarted after a crash, a time-out or a request that used too much memory."""

    def __init__(self) -> None:
        self.proc: subprocess.Popen | None = None

    def _start(self) -> subprocess.Popen:
        env = {**os.environ, "OPENBLAS_NUM_THREADS": "1", "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
        return subprocess.Popen([sys.executable, "-m", "tests.hostile_worker", str(WORKER_MEMORY_MB)], cwd=REPO,
                                env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                                text=True)

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait()
            self.proc = None

    def ask(self, mode: str, checkpoint: Path, output: Path | None = None, classes: Path | None = None) -> dict:
        if self.proc is None or self.proc.poll() is not None:
            self.proc = self._start()
        request = {"mode": mode, "checkpoint": str(checkpoint), "output": str(output), "classes": classes}
        self.proc.stdin.write(json.dumps(request) + "\n")
        self.proc.stdin.flush()
        ready, _, _ = select.select([self.proc.stdout], [], [], TIMEOUT_S)
        line = self.proc.stdout.readline() if ready else ""
        if not line:
            self.stop()
            return {"outcome": "timed out" if not ready else "crashed"}
        result = json.loads(line)
        if result["peak_rss_mb"] > PEAK_RSS_LIMIT_MB:
            self.stop()  # the next request starts from a fresh process
        return result


@pytest.fixture(scope="module")
def worker():
    child = Worker()
    yield child
    child.stop()


def assert_refused_cleanly(result: dict, match: str | None = None) -> None:
    """A CheckpointError/ConversionError with a short one-line message, in bounded time and memory."""
    assert result["outcome"] == "refused", result
    assert result["length"] < MESSAGE_LIMIT and "\n" not in result["message"], result
    assert "MemoryError" not in result["message"], result
    assert result["peak_rss_mb"] < PEAK_RSS_LIMIT_MB, result
    if match is not None:
        assert match in result["message"], result


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


SMALL_V2 = V2Spec(8, (16, 32), 48, (1, 2), num_classes=5)


def small_state_dict() -> dict[str, torch.Tensor]:
    net = randomize_(build_torch_model(SMALL_V2, "torchvision"), torch.Generator().manual_seed(1))
    return dict(net.state_dict())


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


# --------------------------------------------------------------------------
# fuzzing: mutated valid checkpoints
# --------------------------------------------------------------------------


@pytest.fixture(scope="module")
def valid_checkpoints(tmp_path_factory) -> dict[str, bytes]:
    folder = tmp_path_factory.mktemp("valid")
    state = small_state_dict()
    files = {}
    for fmt in ("zip", "legacy"):
        path = folder / f"{fmt}.pth"
        torch.save(state, path, _use_new_zipfile_serialization=fmt == "zip")
        files[fmt] = path.read_bytes()
    return files


def structure_end(fmt: str, data: bytes) -> int:
    """Where the pickles end (legacy) or the zip's data.pkl record ends: mutations before it hit the parser."""
    if fmt == "legacy":
        stream = io.BytesIO(data)
        for _ in range(5):  # magic, version, sys_info, main pickle, key list
            for _op in pickletools.genops(stream):
                pass
        return stream.tell()
    with zipfile.ZipFile(io.BytesIO(data)) as archive:
        info = archive.getinfo(next(n for n in archive.namelist() if n.endswith("/data.pkl")))
    name_length, extra_length = struct.unpack("<HH", data[info.header_offset + 26 : info.header_offset + 30])
    return info.header_offset + 30 + name_length + extra_length + info.compress_size


def rezip_with_pickle(data: bytes, pickled: bytes) -> bytes:
    """The zip ``data`` with its data.pkl replaced (and a correct CRC, so the reader gets to run it)."""
    out = io.BytesIO()
    with zipfile.ZipFile(io.BytesIO(data)) as source, zipfile.ZipFile(out, "w") as target:
        for info in source.infolist():
            target.writestr(info.filename, pickled if info.filename.endswith("/data.pkl") else source.read(info))
    return out.getvalue()


@st.composite
def mutated(draw, files: dict[str, bytes]) -> tuple[str, bytes]:
    """A valid checkpoint with 1-4 bit flips, byte edits, insertions, deletions or a truncation, mostly in
    its pickles (for zip files: inside data.pkl, re-zipped with a correct CRC, or anywhere in the file)."""
    fmt = draw(st.sampled_from(sorted(files)))
    data = files[fmt]
    inside_pickle = fmt == "zip" and draw(st.booleans())
    if inside_pickle:
        with zipfile.ZipFile(io.BytesIO(data)) as archive:
            target = bytearray(archive.read(next(n for n in archive.namelist() if n.endswith("/data.pkl"))))
    else:
        target = bytearray(data)
    end = structure_end(fmt, data) if not inside_pickle else len(target)
    for _ in range(draw(st.integers(1, 4))):
        position = draw(st.one_of(st.integers(0, min(end, len(target)) - 1), st.integers(0, len(target) - 1)))
        kind = draw(st.sampled_from(["flip", "flip", "byte", "byte", "insert", "delete", "truncate"]))
        if kind == "flip":
            target[position] ^= 1 << draw(st.integers(0, 7))
        elif kind == "byte":
            target[position] = draw(st.integers(0, 255))
        elif kind == "insert":
            target[position:position] = draw(st.binary(min_size=1, max_size=8))
        elif kind == "delete":
            del target[position : position + draw(st.integers(1, 8))]
        else:
            del target[position:]
        if not target:
            break
    return fmt, rezip_with_pickle(data, bytes(target)) if inside_pickle else bytes(target)


def check_mutation(worker: Worker, folder: Path, fmt: str, data: bytes) -> None:
    path = folder / f"mutated-{fmt}.pth"
    path.write_bytes(data)
    result = worker.ask("convert", path, folder / "out.npz")
    if result["outcome"] != "ok":
        assert_refused_cleanly(result)
    assert result["peak_rss_mb"] < PEAK_RSS_LIMIT_MB, result


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_fuzz_mutated_checkpoints(tmp_path: Path, worker: Worker, valid_checkpoints, data) -> None:
    fmt, mutation = data.draw(mutated(valid_checkpoints))
    check_mutation(worker, tmp_path, fmt, mutation)


FUZZ_EXAMPLES = int(os.environ.get("NPSHUFFLE_FUZZ_EXAMPLES", "2000"))


@pytest.mark.fuzz
@pytest.mark.skipif(not os.environ.get("NPSHUFFLE_FUZZ"), reason="long fuzzing run: set NPSHUFFLE_FUZZ=1")
@settings(max_examples=FUZZ_EXAMPLES, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_fuzz_mutated_checkpoints_long(tmp_path: Path, worker: Worker, valid_checkpoints, data) -> None:
    fmt, mutation = data.draw(mutated(valid_checkpoints))
    check_mutation(worker, tmp_path, fmt, mutation)
