"""The npshuffle model file: folded weights and a JSON description, in an ``.npz`` or a ``.safetensors``.

Layout of the ``.npz`` (an ordinary NumPy archive, read with ``allow_pickle=False``, so loading runs no code):

* one float32 array per plan tensor, named as in :meth:`npshuffle.plan.Plan.weight_shapes`
  (``stem.weight``, ``units.3.pw1.bias``, ``classifier.weight``, ...);
* ``__metadata__``: a uint8 array holding UTF-8 JSON::

    {"format": "npshuffle-model", "format_version": 1,
     "arch": {...V1Spec/V2Spec fields...}, "dialect": "torchvision" | "megvii",
     "variant": "shufflenet_v2_x1_0", "num_classes": 1000, "class_names": [...],
     "preprocess": {...recipe...}, "source": {"file": ..., "sha256": ...}, ...}

The same model as a ``.safetensors`` file (``npshuffle export MODEL -o model.safetensors``; read
with ``npshuffle.safetensors_file``, NumPy only): one F32 tensor per plan tensor, named as above,
and the same JSON as one string, the header's ``__metadata__["npshuffle"]`` (safetensors metadata
values are strings). :func:`save_model_file` writes either, by the file name's extension;
:func:`load_model_file` reads either, by the file's first bytes.

:func:`load_model_file` checks every field, every tensor's presence, shape, dtype and finiteness,
and refuses anything else with a :class:`ModelFileError` that names the file and the problem.
"""

from __future__ import annotations

import json
import math
import os
import re
import struct
import zipfile
import zlib
from dataclasses import dataclass

import numpy as np

from .archs import DIALECTS, MAX_PARAMETERS, ArchError, V1Spec, V2Spec, build_plan, spec_from_dict, spec_to_dict
from .atomic import write_atomically
from .plan import Plan
from .safetensors_file import (
    HeaderTooLargeError,
    SafetensorsError,
    SafetensorsReader,
    looks_like_safetensors,
    write_safetensors,
)
from .strict_json import is_text

FORMAT = "npshuffle-model"
FORMAT_VERSION = 1
METADATA_KEY = "__metadata__"
SAFETENSORS_METADATA_KEY = "npshuffle"  # the __metadata__ entry of a .safetensors model holding the JSON

# How each dialect's published weights expect their input (see npshuffle.preprocess).
DEFAULT_RECIPES = {
    "torchvision": {
        "resize": 256, "crop": 224, "interpolation": "bilinear", "channel_order": "RGB",
        "scale": 1 / 255, "mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225],
    },
    "megvii": {
        "resize": 256, "crop": 224, "interpolation": "bilinear", "channel_order": "BGR",
        "scale": 1.0, "mean": [0.0, 0.0, 0.0], "std": [1.0, 1.0, 1.0],
    },
}


class ModelFileError(ValueError):
    """A model file that cannot be used; the message names the file and what is wrong."""


@dataclass
class ModelFile:
    """Everything a model file holds, validated."""

    spec: V1Spec | V2Spec
    dialect: str
    plan: Plan
    weights: dict[str, np.ndarray]
    metadata: dict

    @property
    def class_names(self) -> list[str]:
        return self.metadata["class_names"]

    @property
    def recipe(self) -> dict:
        return self.metadata["preprocess"]


# The smallest input a model takes: ShuffleNet halves the image five times (stem, max-pool, three
# stages), so 32 px leave 1x1 at the last stage; anything smaller has nothing left to classify.
MIN_INPUT_SIZE = 32
# Sane ranges for a recipe read from a file (torchvision and Megvii use 224..256 px).
MIN_SIZE, MAX_SIZE = MIN_INPUT_SIZE, 2048


def check_recipe(recipe: dict) -> dict:
    """Validate a preprocessing recipe; returns it with numbers normalised. Raises ValueError.

    Sizes are integers in 32..2048 with crop <= resize; scale, mean and std are finite (std > 0,
    scale > 0), mean and std three numbers each: a file cannot make preprocessing allocate a
    gigapixel image or divide by zero."""
    if not isinstance(recipe, dict):
        raise ValueError("the preprocessing recipe must be an object")
    required = {"resize", "crop", "interpolation", "channel_order", "scale", "mean", "std"}
    missing = required - set(recipe)
    if missing:
        raise ValueError(f"preprocessing recipe lacks {sorted(missing)}")
    out = dict(recipe)
    for key in ("resize", "crop"):
        value = recipe[key]
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or not MIN_SIZE <= value <= MAX_SIZE:
            raise ValueError(f"recipe {key} must be an integer from {MIN_SIZE} to {MAX_SIZE} px, got {value!r}"[:200])
        out[key] = int(value)
    if not out["crop"] <= out["resize"]:
        raise ValueError(f"recipe needs crop <= resize, got crop={out['crop']}, resize={out['resize']}")
    if recipe["channel_order"] not in ("RGB", "BGR"):
        raise ValueError(f"recipe channel_order must be RGB or BGR, got {recipe['channel_order']!r}"[:200])
    if recipe["interpolation"] not in ("bilinear", "bicubic", "nearest"):
        raise ValueError(
            f"recipe interpolation must be bilinear, bicubic or nearest, got {recipe['interpolation']!r}"[:200])
    out["scale"] = _finite(recipe["scale"], "scale")
    for key in ("mean", "std"):
        values = recipe[key]
        if not isinstance(values, (list, tuple)) or len(values) != 3:
            raise ValueError(f"recipe {key} must be 3 finite numbers, got {values!r}"[:200])
        out[key] = [_finite(v, key) for v in values]
    if min(out["std"]) <= 0 or out["scale"] <= 0:
        raise ValueError(f"recipe std and scale must be positive, got std {out['std']}, scale {out['scale']}")
    return out


def _finite(value, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise ValueError(f"recipe {name} must be a number, got {value!r}"[:200])
    value = float(value)
    if not math.isfinite(value) or abs(value) > 1e6:
        raise ValueError(f"recipe {name} must be a finite number of sensible size, got {value!r}")
    return value


def default_class_names(num_classes: int) -> list[str]:
    return [f"class_{i}" for i in range(num_classes)]


def save_model_file(
    path: str | os.PathLike,
    spec: V1Spec | V2Spec,
    dialect: str,
    weights: dict[str, np.ndarray],
    *,
    class_names: list[str] | None = None,
    recipe: dict | None = None,
    extra: dict | None = None,
) -> dict:
    """Validate and write a model file, atomically; returns the metadata written.

    ``weights`` must hold exactly the plan's tensors (folded BN, see the module docstring).
    ``extra`` adds metadata fields (source, accuracy, licence, ...). A ``path`` ending in
    ``.safetensors`` gets a safetensors file, any other an ``.npz``.
    """
    from .archs import count_parameters, variant_name

    plan = build_plan(spec, dialect)
    class_names = list(class_names) if class_names is not None else default_class_names(spec.num_classes)
    metadata = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "arch": spec_to_dict(spec),
        "dialect": dialect,
        "variant": variant_name(spec),
        "num_classes": spec.num_classes,
        "class_names": class_names,
        "preprocess": check_recipe(recipe if recipe is not None else DEFAULT_RECIPES[dialect]),
        "parameters": count_parameters(plan, dialect),
        "macs_224": plan.macs(224),
        **(extra or {}),
    }
    write_model_file(path, ModelFile(spec, dialect, plan, weights, metadata))
    return metadata


def write_model_file(path: str | os.PathLike, model: ModelFile) -> None:
    """Write ``model`` (its metadata as it is) to ``path``, atomically: a ``.safetensors`` file
    when ``path`` ends so, else an ``.npz``. What :func:`load_model_file` checks is checked first."""
    arrays = {name: np.ascontiguousarray(value, dtype=np.float32) for name, value in model.weights.items()}
    _check_contents(str(path), model.metadata, model.plan, arrays)
    text = json.dumps(model.metadata)
    if len(text) > MAX_METADATA_BYTES:  # (json.dumps escapes all but ASCII: characters are bytes)
        raise ModelFileError(f"{path}: {len(text):,} bytes of metadata, more than the {MAX_METADATA_BYTES:,} a model "
                             "file may hold")
    # atomically (npshuffle.atomic): a kill mid-write leaves the previous file at ``path`` intact
    if str(path).lower().endswith(".safetensors"):
        try:
            write_safetensors(path, arrays, {SAFETENSORS_METADATA_KEY: text})
        except HeaderTooLargeError as exc:
            # The header stores the JSON as a JSON string: every backslash and quote of it is escaped
            # once more, so metadata within MAX_METADATA_BYTES can still overflow the header's limit.
            raise ModelFileError(f"{path}: cannot be written as safetensors: {exc} (the model's {len(text):,} "
                                 "bytes of metadata, escaped again in the header); write an .npz instead") from None
    else:
        arrays[METADATA_KEY] = np.frombuffer(text.encode("utf-8"), dtype=np.uint8)
        write_atomically(path, lambda f: np.savez_compressed(f, **arrays))


MAX_FILE_BYTES = 512 * 2**20  # above any file archs.MAX_PARAMETERS allows (V2 x2.0: 30 MB)
MAX_ENTRIES = 20_000  # archive members: two per layer of the largest bounded architecture, and more
MAX_METADATA_BYTES = 16 * 2**20  # the JSON: class names and provenance
NPY_HEADER_MAX = 4096  # a .npy header is ~128 bytes


def _member_name(tensor: str) -> str:
    return tensor + ".npy"


class ShapeMismatch(ValueError):
    """A tensor of the wrong shape: reported with the other problems, not alone."""


# The header NumPy writes for a plain array (keys sorted, values' repr, padded with spaces to a
# multiple of 64 bytes, ending in a newline): {'descr': '<f4', 'fortran_order': False, 'shape': (5, 1024), }
_NPY_HEADER = re.compile(r"\{'descr': '([<>|=]?[a-zA-Z][0-9]{0,2})', 'fortran_order': (True|False), "
                         r"'shape': \(((?:[0-9]{1,19}, )*[0-9]{1,19},?)?\), \} *\n")


def _read_npy_header(f, name: str) -> tuple[tuple[int, ...], bool, np.dtype]:
    """(shape, Fortran order, dtype) of the ``.npy`` header at ``f`` (after its magic), matched
    against the one form NumPy writes. NumPy's own reader evaluates the header with
    ``ast.literal_eval``: on a crafted header that is Python's parser at work on untrusted text
    (printing its warnings, "invalid escape sequence", before the file's one-line refusal); a
    pattern of digits, quotes and a few names is all a model file's tensors need."""
    version = np.lib.format.read_magic(f)
    if version not in ((1, 0), (2, 0), (3, 0)):
        raise ValueError(f"{name}: unsupported .npy version {version}")
    size_bytes = 2 if version == (1, 0) else 4
    length, = struct.unpack("<H" if version == (1, 0) else "<I", f.read(size_bytes))
    if length > NPY_HEADER_MAX:
        raise ValueError(f"{name}: .npy header of {length} bytes")
    text = f.read(length).decode("latin-1")
    match = _NPY_HEADER.fullmatch(text)
    if match is None:
        raise ValueError(f"{name}: its .npy header is not the form NumPy writes ({text[:80].rstrip()!r})")
    descr, fortran, shape = match.groups()
    dims = tuple(int(d) for d in shape.replace(",", " ").split()) if shape else ()
    return dims, fortran == "True", np.dtype(descr)


def _read_npy(archive: zipfile.ZipFile, info: zipfile.ZipInfo, dtype: str, shape: tuple | None) -> np.ndarray:
    """One ``.npy`` member, checked before anything is allocated or decompressed past its header:
    the declared (uncompressed) size, the header's dtype and shape (``shape`` None: any 1-D), and
    then exactly that many bytes are read, whatever the compressed stream would inflate to."""
    itemsize = np.dtype(dtype).itemsize
    if info.file_size > NPY_HEADER_MAX + (MAX_METADATA_BYTES if shape is None else itemsize * math.prod(shape)):
        raise ValueError(f"{info.filename} declares {info.file_size} bytes, more than its shape can hold")
    with archive.open(info) as f:
        npy_shape, fortran, npy_dtype = _read_npy_header(f, info.filename)
        if npy_dtype != np.dtype(dtype) or fortran:
            raise ValueError(f"{info.filename}: dtype {npy_dtype}{' (Fortran order)' if fortran else ''}, expected "
                             f"{np.dtype(dtype)}")
        if shape is None:
            if len(npy_shape) != 1 or npy_shape[0] > MAX_METADATA_BYTES:
                raise ValueError(f"{info.filename}: shape {npy_shape}, expected at most {MAX_METADATA_BYTES} bytes")
        elif tuple(npy_shape) != tuple(shape):
            raise ShapeMismatch(f"{info.filename[:-4]} has shape {tuple(npy_shape)}, expected {tuple(shape)}")
        count = math.prod(npy_shape)
        data = f.read(count * itemsize)
        if len(data) != count * itemsize or f.read(1):
            raise ValueError(f"{info.filename}: data does not match its header's shape")
    return np.frombuffer(data, dtype=dtype).reshape(npy_shape).copy()


# what a damaged or hostile archive can raise from zipfile, zlib, a .npy header and the JSON metadata
_READ_ERRORS = (OSError, ValueError, EOFError, KeyError, IndexError, TypeError, RuntimeError,
                NotImplementedError, MemoryError, RecursionError, OverflowError, struct.error, zlib.error,
                zipfile.BadZipFile, UnicodeDecodeError)


def _zip_entry_count(path: str) -> int:
    """How many entries the archive's end record declares (read before zipfile parses them all;
    ``zipfile._EndRecData`` is private but has not changed in decades: if it goes, no limit)."""
    end_record = getattr(zipfile, "_EndRecData", None)
    if end_record is None:
        return 0
    with open(path, "rb") as f:
        record = end_record(f)
    if record is None:
        raise zipfile.BadZipFile("no end of central directory record")
    return record[zipfile._ECD_ENTRIES_TOTAL]


def not_a_model_file(path: str) -> str:
    """The message for a model path that is not a regular file: missing, a folder, or a pipe/device."""
    if not os.path.exists(path):
        return f"{path}: no such model file"
    if os.path.isdir(path):
        return f"{path}: a folder, not a model file (give the .npz or .safetensors file inside it)"
    return f"{path}: not a regular file (a pipe or device?); a model must be an .npz or .safetensors file"


def load_model_file(path: str | os.PathLike) -> ModelFile:
    """Read and validate a model file, ``.npz`` or ``.safetensors`` (told by its first bytes).
    Raises :class:`ModelFileError` (never a numpy traceback).

    Nothing is allocated on the file's word: the metadata is read first (a bounded member, or the
    safetensors header, checked against the file's size), the architecture it describes is
    bounded and gives every tensor's name and shape, the file's tensor list must hold exactly
    those (by name and declared size) before any is read or decompressed, and each member's
    header must match before its data is read.
    """
    path = str(path)
    if not os.path.isfile(path):
        raise ModelFileError(not_a_model_file(path))
    if os.path.getsize(path) > MAX_FILE_BYTES:
        raise ModelFileError(f"{path}: {os.path.getsize(path)} bytes, too large to be a model file")
    try:
        with open(path, "rb") as f:
            head = f.read(16)
    except OSError as exc:
        raise ModelFileError(f"{path}: cannot read the model file ({exc.strerror or exc})") from None
    model = _load_safetensors(path) if looks_like_safetensors(path, head) else _load_npz(path)
    _check_contents(path, model.metadata, model.plan, model.weights)
    return model


_MAKE_ONE = "make one with `npshuffle convert CHECKPOINT -o MODEL.npz`"


def _load_npz(path: str) -> ModelFile:
    """An ``.npz`` model file, its contents not yet checked; see :func:`load_model_file`."""
    try:
        entries = _zip_entry_count(path)
        if entries > MAX_ENTRIES:  # (zipfile would build an object per entry before we see any)
            raise ModelFileError(f"{path}: an archive of {entries} entries is not a model file")
        with zipfile.ZipFile(path) as archive:
            members = {info.filename: info for info in archive.infolist()}
            meta_info = members.pop(_member_name(METADATA_KEY), None)
            if meta_info is None:
                raise ModelFileError(f"{path}: no {METADATA_KEY} entry: not an npshuffle model file; {_MAKE_ONE}")
            metadata, spec, dialect, plan = _read_metadata(path, _read_npy(archive, meta_info, "u1", None))
            expected = plan.weight_shapes()
            unexpected = sorted(n.removesuffix(".npy") for n in set(members) - {_member_name(t) for t in expected})
            if unexpected:  # (refused before anything is decompressed: a zip bomb hides in such an entry)
                raise ModelFileError(f"{path}: unexpected tensors: {', '.join(unexpected)}"[:400])
            arrays, problems = {}, []
            for tensor, shape in expected.items():
                info = members.get(_member_name(tensor))
                if info is None:
                    continue  # reported with the other missing tensors
                try:
                    arrays[tensor] = _read_npy(archive, info, "<f4", shape)
                except ShapeMismatch as exc:
                    problems.append(str(exc))
            if problems:
                raise ModelFileError(f"{path}: " + "; ".join(problems)[:600])
    except ModelFileError:
        raise
    except zipfile.BadZipFile:
        raise ModelFileError(f"{path}: not a readable npshuffle model file (not a .npz archive); {_MAKE_ONE}") from None
    except _READ_ERRORS as exc:
        message = f"{type(exc).__name__}: {exc}"[:300]
        raise ModelFileError(f"{path}: not a readable npshuffle model file, damaged ({message}); {_MAKE_ONE}") from None
    return ModelFile(spec, dialect, plan, arrays, metadata)


def _load_safetensors(path: str) -> ModelFile:
    """A ``.safetensors`` model file, its contents not yet checked, with the ``.npz``'s checks: the
    header is validated against the file (``npshuffle.safetensors_file``), the metadata read from
    it, and the tensor list must be exactly the plan's, float32 of the plan's shapes, before any
    tensor is read."""
    try:
        with SafetensorsReader(path, max_data_bytes=MAX_FILE_BYTES) as reader:
            text = reader.metadata.get(SAFETENSORS_METADATA_KEY)
            if text is None:
                raise ModelFileError(
                    f"{path}: no npshuffle metadata in its header: a state dict, not an npshuffle model file? "
                    f"Convert it with `npshuffle convert {path} -o model.npz`"[:400])
            raw = text.encode("utf-8", "surrogatepass")
            if len(raw) > MAX_METADATA_BYTES:
                raise ModelFileError(f"{path}: {len(raw):,} bytes of metadata, more than {MAX_METADATA_BYTES:,}")
            metadata, spec, dialect, plan = _read_metadata(path, np.frombuffer(raw, np.uint8))
            expected = plan.weight_shapes()
            unexpected = sorted(set(reader.entries) - set(expected))
            if unexpected:
                raise ModelFileError(f"{path}: unexpected tensors: {', '.join(unexpected)}"[:400])
            problems = [f"{name} has dtype {entry.dtype}, expected F32" if entry.dtype != "F32" else
                        f"{name} has shape {entry.shape}, expected {expected[name]}"
                        for name, entry in reader.entries.items()
                        if entry.dtype != "F32" or entry.shape != expected[name]]
            if problems:
                raise ModelFileError(f"{path}: " + "; ".join(problems)[:600])
            arrays = {name: reader.read(name) for name in expected if name in reader.entries}
    except SafetensorsError as exc:
        raise ModelFileError(str(exc)) from None
    except OSError as exc:
        raise ModelFileError(f"{path}: cannot read the model file ({exc.strerror or exc})") from None
    return ModelFile(spec, dialect, plan, arrays, metadata)


def _read_metadata(path: str, raw: np.ndarray) -> tuple[dict, V1Spec | V2Spec, str, Plan]:
    """The metadata JSON -> (metadata, spec, dialect, plan), every field checked."""
    try:
        metadata = json.loads(raw.tobytes().decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ModelFileError(f"{path}: its metadata is not valid JSON ({exc})"[:300]) from None
    except RecursionError:
        raise ModelFileError(f"{path}: its metadata is nested too deeply to be a model description") from None
    if not isinstance(metadata, dict) or metadata.get("format") != FORMAT:
        raise ModelFileError(f"{path}: not an npshuffle model file (format field is not {FORMAT!r})")
    if metadata.get("format_version") != FORMAT_VERSION:
        raise ModelFileError(
            f"{path}: model format version {metadata.get('format_version')!r}; this npshuffle reads version "
            f"{FORMAT_VERSION}: re-convert the checkpoint with this version"[:300]
        )
    try:
        spec = spec_from_dict(metadata.get("arch"))
        dialect = metadata.get("dialect")
        if dialect not in DIALECTS:
            raise ArchError(f"unknown dialect {dialect!r}"[:200])
        plan = build_plan(spec, dialect)
        parameters = sum(math.prod(shape) for shape in plan.weight_shapes().values())
        if parameters > MAX_PARAMETERS:
            raise ArchError(f"the architecture has {parameters:,} parameters, more than {MAX_PARAMETERS:,}")
        metadata["preprocess"] = check_recipe(metadata.get("preprocess"))
    except (ArchError, ValueError, TypeError) as exc:
        raise ModelFileError(f"{path}: {exc}"[:400]) from None
    return metadata, spec, dialect, plan


def _surrogate_problems(names: list[str]) -> list[str]:
    """The first class name holding a lone surrogate, as a problem (or none). JSON can spell one
    (``"\\ud800"``), but it is no text: no UTF-8 output can hold it (``predict -o results.csv``
    failed on it mid-run). Control characters are text, escaped where shown (``npshuffle.cli``)."""
    for index, name in enumerate(names):
        if not is_text(name):
            return [f"class name {index} ({ascii(name[:40])}) holds a lone surrogate, which is not text"]
    return []


def _check_contents(path: str, metadata: dict, plan: Plan, arrays: dict[str, np.ndarray]) -> None:
    expected = plan.weight_shapes()
    problems = []
    names = metadata.get("class_names")
    if not isinstance(names, list) or len(names) != plan.classifier.num_classes or not all(
        isinstance(n, str) for n in names
    ):
        problems.append(f"class_names must be a list of {plan.classifier.num_classes} strings")
    else:
        problems.extend(_surrogate_problems(names))
    missing = sorted(set(expected) - set(arrays))
    unexpected = sorted(set(arrays) - set(expected))
    if missing:
        problems.append(f"missing tensors: {', '.join(missing)}")
    if unexpected:
        problems.append(f"unexpected tensors: {', '.join(unexpected)}")
    for name in sorted(set(expected) & set(arrays)):
        value = arrays[name]
        if value.shape != expected[name]:
            problems.append(f"{name} has shape {value.shape}, expected {expected[name]}")
        elif value.dtype != np.float32:
            problems.append(f"{name} has dtype {value.dtype}, expected float32")
        elif not np.isfinite(value).all():
            problems.append(f"{name} holds NaN or infinite values")
    if problems:
        raise ModelFileError(f"{path}: " + "; ".join(problems)[:600])
