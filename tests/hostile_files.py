"""Hostile checkpoint files, built by hand: pickle opcodes, zip records, legacy streams, zip bombs.

Each builder returns bytes (or writes a small file) in a fraction of a second, so the hostile
tests can make files that would take gigabytes or hours to read naively. Used by
tests/test_hostile_checkpoints*.py.
"""

from __future__ import annotations

import io
import pickle
import struct
import zipfile
import zlib
from pathlib import Path

import torch

from npshuffle.archs import V2Spec
from npshuffle.training.torch_ref import build_torch_model, randomize_
from weights_convert.torch_pickle import LEGACY_MAGIC_NUMBER, LEGACY_PROTOCOL_VERSION

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
# a small valid state dict
# --------------------------------------------------------------------------

SMALL_V2 = V2Spec(8, (16, 32), 48, (1, 2), num_classes=5)


def small_state_dict() -> dict[str, torch.Tensor]:
    net = randomize_(build_torch_model(SMALL_V2, "torchvision"), torch.Generator().manual_seed(1))
    return dict(net.state_dict())
