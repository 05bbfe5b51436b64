"""The safetensors format, read and written with NumPy alone: no torch, no ``safetensors`` package.

A ``.safetensors`` file is (https://github.com/huggingface/safetensors):

    8 bytes     N, the header's length, an unsigned little-endian 64-bit integer
    N bytes     the header: a UTF-8 JSON object
                  {"<tensor name>": {"dtype": "F32", "shape": [16, 3, 3, 3], "data_offsets": [begin, end]},
                   ...,
                   "__metadata__": {"<key>": "<string value>", ...}}        (optional, strings only)
    the rest    the data region: each tensor's bytes, little-endian, C order, at
                ``[begin, end)`` counted from the start of the region

Nothing in it is code, but every number in it is the file's word. :class:`SafetensorsReader`
checks the whole header against the real file size before it allocates anything but the header
itself: the length (at most :data:`MAX_HEADER_BYTES`, and within the file), a JSON object without
duplicate keys, known dtypes only, shapes of non-negative integers, every ``[begin, end)`` inside the
data region with ``end - begin == itemsize * prod(shape)``, no two tensors overlapping and no byte
left unclaimed (the format's own rule). Then it reads exactly the declared byte ranges, one tensor
at a time, when asked. Every problem is a :class:`SafetensorsError`: one line naming the file and
what is wrong.

Both the converter (``weights_convert``: a torchvision or Megvii state dict in, as from
``safetensors.torch.save_file``) and ``npshuffle.model_file`` (npshuffle's own model, written by
``npshuffle export``) read files through this module, which knows nothing of ShuffleNets.
"""

from __future__ import annotations

import json
import math
import os
import stat
import struct
from dataclasses import dataclass
from typing import IO

import numpy as np

from .atomic import write_atomically
from .strict_json import DuplicateKeyError, refuse_duplicate_keys

METADATA = "__metadata__"

# A ShuffleNet's header is ~100 KB; an npshuffle model's metadata (class names, provenance) at most
# 16 MiB (model_file.MAX_METADATA_BYTES), escaped once more inside the header. The safetensors
# library allows 100 MB, but parsing JSON into Python objects can take ~15 bytes of memory per byte
# of header (a list of one-letter strings): 32 MiB keeps a hostile header under ~0.5 GB.
MAX_HEADER_BYTES = 32 * 2**20
# The data region read from one file: far above any ShuffleNet (V2 x2.0: 30 MB of float32, 60 MB
# as F64), far below what would exhaust memory, whatever size a (sparse) file claims to have.
MAX_DATA_BYTES = 1 * 2**30
MAX_NDIM = 32
# elements of one tensor, counting only its non-zero dimensions: an empty tensor of shape
# (0, 2**31, 2**31) needs no bytes, yet NumPy cannot make it
MAX_ELEMENTS = 2**32

# dtype name -> (numpy dtype of the stored bytes, little-endian). BF16 is stored as 16-bit words and
# widened on reading; BOOL as one byte each.
DTYPES: dict[str, np.dtype] = {
    "F64": np.dtype("<f8"), "F32": np.dtype("<f4"), "F16": np.dtype("<f2"), "BF16": np.dtype("<u2"),
    "I64": np.dtype("<i8"), "I32": np.dtype("<i4"), "I16": np.dtype("<i2"), "I8": np.dtype("i1"),
    "U64": np.dtype("<u8"), "U32": np.dtype("<u4"), "U16": np.dtype("<u2"), "U8": np.dtype("u1"),
    "BOOL": np.dtype("u1"),
}
# BF16 elements widened per step (SafetensorsReader._read_bf16): a 2 MiB read buffer
_BF16_BLOCK = 2**20
# dtypes of the format that NumPy cannot hold, or that make no sense for these weights
UNSUPPORTED_DTYPES = ("F8_E5M2", "F8_E4M3", "F8_E8M0", "F6_E2M3", "F6_E3M2", "F4", "C64")
# numpy dtype -> the name written (the inverse of DTYPES, for :func:`write_safetensors`)
_WRITTEN = {np.dtype(v): k for k, v in DTYPES.items() if k not in ("BF16", "BOOL")} | {np.dtype(bool): "BOOL"}


class SafetensorsError(ValueError):
    """Not a readable safetensors file: the message (one line) names the file and the problem."""


class HeaderTooLargeError(ValueError):
    """What :func:`write_safetensors` was given needs a header over MAX_HEADER_BYTES, more than
    this module (and so npshuffle) would read back."""


@dataclass(frozen=True)
class TensorEntry:
    """One tensor as the header declares it: ``begin``/``end`` are offsets into the *file*."""

    name: str
    dtype: str
    shape: tuple[int, ...]
    begin: int
    end: int


def _brief(value: object, limit: int = 60) -> str:
    """A short printable view of a value read from the file (which chooses its names and values)."""
    text = repr(value)[: 4 * limit]
    text = "".join(c if c.isprintable() else c.encode("unicode_escape").decode("ascii") for c in text)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def open_regular_file(path: str, error: type[Exception] | None = None) -> IO[bytes]:
    """``path`` opened for binary reading, refused (with ``error``, default :class:`SafetensorsError`)
    unless it is a regular file: a named pipe would block forever, a device never end, so the file
    is opened without blocking and its type checked before a byte is read. ``OSError`` (missing, no
    permission) propagates. The checkpoint reader (``weights_convert.torch_pickle``) uses it too."""
    nonblock = getattr(os, "O_NONBLOCK", 0)
    fd = os.open(path, os.O_RDONLY | nonblock | getattr(os, "O_BINARY", 0))
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise (error or SafetensorsError)(f"{path}: not a regular file (a folder, pipe or device)")
        if nonblock:
            os.set_blocking(fd, True)
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise


def looks_like_safetensors(path: str, head: bytes) -> bool:
    """Whether a file named ``path`` that starts with ``head`` (its first 9+ bytes) is meant as
    safetensors: not a zip (an ``.npz`` or a torch checkpoint) and either named ``.safetensors`` or
    opening like one (8 bytes of length, then the JSON header's ``{``)."""
    if head.startswith(b"PK\x03\x04"):
        return False
    return str(path).lower().endswith(".safetensors") or head[8:9] == b"{"


class SafetensorsReader:
    """A safetensors file opened and its header validated (see the module docstring)::

        with SafetensorsReader(path) as f:
            f.entries     # {name: TensorEntry}, in the header's order
            f.metadata    # the __metadata__ strings ({} if none)
            x = f.read("conv1.0.weight")

    Raises :class:`SafetensorsError` on anything but a well-formed file, ``OSError`` if it cannot
    be opened.
    """

    def __init__(self, path: str | os.PathLike, max_data_bytes: int = MAX_DATA_BYTES):
        self.path = os.fspath(path)
        self._file = open_regular_file(self.path)
        try:
            self.entries, self.metadata = self._read_header(max_data_bytes)
        except BaseException:
            self._file.close()
            raise

    def __enter__(self) -> SafetensorsReader:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        self._file.close()

    def _fail(self, problem: str) -> SafetensorsError:
        return SafetensorsError(f"{self.path}: not a valid safetensors file: {problem}"[:400])

    def _read_header(self, max_data_bytes: int) -> tuple[dict[str, TensorEntry], dict[str, str]]:
        file_size = os.fstat(self._file.fileno()).st_size
        if file_size < 8:
            raise self._fail(f"{file_size} bytes, too short to hold the 8-byte header length")
        (length,) = struct.unpack("<Q", self._file.read(8))
        if length > MAX_HEADER_BYTES:
            raise self._fail(f"its header length field says {length:,} bytes, more than the {MAX_HEADER_BYTES:,} "
                             "a header of weights may have")
        if 8 + length > file_size:
            raise self._fail(f"its header length field says {length:,} bytes, but only {file_size - 8:,} bytes "
                             "follow it (truncated, or not a safetensors file)")
        raw = self._file.read(length)
        if len(raw) != length:
            raise self._fail("the file shrank while being read")
        header = self._parse_json(raw)
        metadata = header.pop(METADATA, {})
        if not isinstance(metadata, dict) or not all(isinstance(v, str) for v in metadata.values()):
            raise self._fail(f"{METADATA} must map names to strings, got {_brief(metadata)}")
        data_start, data_size = 8 + length, file_size - 8 - length
        if data_size > max_data_bytes:
            raise self._fail(f"{data_size:,} bytes of tensor data, more than the {max_data_bytes:,} this reader "
                             "takes (weights of a small image model are far less)")
        entries = {name: self._entry(name, spec, data_start, data_size) for name, spec in header.items()}
        self._check_layout(entries, data_start, data_size)
        return entries, metadata

    def _parse_json(self, raw: bytes) -> dict:
        try:
            header = json.loads(raw.decode("utf-8"), object_pairs_hook=refuse_duplicate_keys)
        except UnicodeDecodeError:
            raise self._fail("its header is not UTF-8 text") from None
        except DuplicateKeyError as exc:
            raise self._fail(f"its header names {_brief(exc.args[0])} twice") from None
        except RecursionError:
            raise self._fail("its header's JSON is nested too deeply") from None
        except ValueError as exc:  # JSONDecodeError, or an integer too long to convert
            raise self._fail(f"its header is not valid JSON ({exc})") from None
        if not isinstance(header, dict):
            raise self._fail(f"its header is a JSON {type(header).__name__}, not an object")
        return header

    def _entry(self, name: str, spec: object, data_start: int, data_size: int) -> TensorEntry:
        where = f"tensor {_brief(name)}"
        if not isinstance(spec, dict) or set(spec) != {"dtype", "shape", "data_offsets"}:
            raise self._fail(f"{where} must be described by dtype, shape and data_offsets, got {_brief(spec)}")
        dtype, shape, offsets = spec["dtype"], spec["shape"], spec["data_offsets"]
        if dtype in UNSUPPORTED_DTYPES:
            raise SafetensorsError(f"{self.path}: {where} has dtype {dtype}, which npshuffle does not read; "
                                   "save the weights as F32, F16 or BF16")
        if type(dtype) is not str or dtype not in DTYPES:
            raise self._fail(f"{where} has unknown dtype {_brief(dtype)} (expected one of {', '.join(DTYPES)})")
        if (not isinstance(shape, list) or len(shape) > MAX_NDIM
                or not all(type(d) is int and d >= 0 for d in shape)):
            raise self._fail(f"{where}: shape must be a list of at most {MAX_NDIM} non-negative integers, "
                             f"got {_brief(shape)}")
        if math.prod(d for d in shape if d) > MAX_ELEMENTS:
            raise self._fail(f"{where}: shape {_brief(shape)} has more than {MAX_ELEMENTS:,} elements")
        if not (isinstance(offsets, list) and len(offsets) == 2 and all(type(o) is int for o in offsets)):
            raise self._fail(f"{where}: data_offsets must be two integers [begin, end], got {_brief(offsets)}")
        begin, end = offsets
        if not 0 <= begin <= end <= data_size:
            raise self._fail(f"{where}: data_offsets [{begin}, {end}] are not within the {data_size:,} bytes of "
                             "data (truncated file?)"[:300])
        count = math.prod(shape)  # (Python integers: no overflow; at most 32 factors)
        if (end - begin) != count * DTYPES[dtype].itemsize:
            raise self._fail(f"{where}: shape {tuple(shape)} of {dtype} needs {count * DTYPES[dtype].itemsize:,} "
                             f"bytes, but its data_offsets give {end - begin:,}"[:300])
        return TensorEntry(name, dtype, tuple(shape), data_start + begin, data_start + end)

    def _check_layout(self, entries: dict[str, TensorEntry], data_start: int, data_size: int) -> None:
        """No two tensors share a byte, and every byte of the data region belongs to one."""
        position = data_start
        for entry in sorted(entries.values(), key=lambda e: (e.begin, e.end)):
            if entry.begin < position:
                raise self._fail(f"tensor {_brief(entry.name)} overlaps the tensor before it")
            if entry.begin > position:
                raise self._fail(f"bytes {position - data_start:,}..{entry.begin - data_start:,} of the data belong "
                                 "to no tensor")
            position = entry.end
        if position != data_start + data_size:
            raise self._fail(f"the last {data_start + data_size - position:,} bytes of the data belong to no tensor")

    def read(self, name: str) -> np.ndarray:
        """Tensor ``name`` as a new, writable, C-contiguous array of its shape, in native byte order:
        exactly its declared bytes are read. The dtypes are what the file says, as the torch
        checkpoint reader gives them (F16 float16, F64 float64, ...), except BF16, which NumPy
        lacks: widened to float32 (exactly), and BOOL, bool."""
        entry = self.entries[name]
        self._file.seek(entry.begin)
        if entry.dtype == "BF16":
            return self._read_bf16(entry)
        data = bytearray(entry.end - entry.begin)  # (a size checked against the file: see _entry)
        if self._file.readinto(data) != len(data):
            raise self._fail(f"the file shrank while tensor {_brief(name)} was being read")
        array = np.frombuffer(data, dtype=DTYPES[entry.dtype]).reshape(entry.shape)  # writable: over a bytearray
        if entry.dtype == "BOOL":
            return array != 0
        return array if array.dtype.isnative else array.astype(array.dtype.newbyteorder("="))

    def _read_bf16(self, entry: TensorEntry) -> np.ndarray:
        """A BF16 tensor (the file positioned at its bytes) widened to float32: a bfloat16 is the
        top 16 bits of a float32. Read a block at a time into the result, so that memory is the
        result (twice the stored bytes) and one block: widening the whole stored tensor at once held
        it, a uint32 copy and a shifted copy together, five times its bytes."""
        words = np.empty(entry.shape, np.uint32)
        flat = words.reshape(-1)  # (a view: C-contiguous)
        block = bytearray(2 * _BF16_BLOCK)
        for start in range(0, flat.size, _BF16_BLOCK):
            part = memoryview(block)[: 2 * min(_BF16_BLOCK, flat.size - start)]
            if self._file.readinto(part) != len(part):
                raise self._fail(f"the file shrank while tensor {_brief(entry.name)} was being read")
            target = flat[start:start + len(part) // 2]
            target[...] = np.frombuffer(part, DTYPES["BF16"])
            target <<= 16
        return words.view(np.float32)

    def read_all(self) -> dict[str, np.ndarray]:
        """Every tensor, by name, in the header's order (see :meth:`read`)."""
        return {name: self.read(name) for name in self.entries}


def write_safetensors(path: str | os.PathLike, tensors: dict[str, np.ndarray],
                      metadata: dict[str, str] | None = None) -> None:
    """Write ``tensors`` (numeric or bool NumPy arrays) and ``metadata`` (strings) as a
    safetensors file, atomically (``npshuffle.atomic``). Tensors are stored in the given order,
    C order, little-endian; the header is padded with spaces to a multiple of 8 bytes, so the
    data starts aligned, as the safetensors library writes it."""
    header: dict[str, object] = {}
    if metadata:
        if not all(isinstance(k, str) and isinstance(v, str) for k, v in metadata.items()):
            raise ValueError("safetensors metadata must map strings to strings")
        header[METADATA] = dict(metadata)
    arrays, offset = [], 0
    for name, value in tensors.items():
        if name == METADATA:
            raise ValueError(f"a tensor may not be named {METADATA}")
        array = np.asarray(value)
        dtype = _WRITTEN.get(np.dtype(array.dtype.str.replace(">", "<")))  # (big-endian input: swapped below)
        if dtype is None:
            raise ValueError(f"tensor {name!r}: safetensors has no dtype for {array.dtype}")
        array = np.ascontiguousarray(array, dtype=DTYPES[dtype] if dtype != "BOOL" else np.uint8)
        header[name] = {"dtype": dtype, "shape": list(array.shape), "data_offsets": [offset, offset + array.nbytes]}
        arrays.append(array)
        offset += array.nbytes
    encoded = json.dumps(header, ensure_ascii=False, separators=(",", ":")).encode("utf-8")
    encoded += b" " * (-len(encoded) % 8)
    if len(encoded) > MAX_HEADER_BYTES:
        raise HeaderTooLargeError(f"a safetensors header of {len(encoded):,} bytes, more than {MAX_HEADER_BYTES:,}")

    def write(f) -> None:
        f.write(struct.pack("<Q", len(encoded)))
        f.write(encoded)
        for array in arrays:
            f.write(array.tobytes())

    write_atomically(path, write)
