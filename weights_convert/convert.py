"""Checkpoint in, folded weights out.

    load (a torch.save file through the restricted unpickler, no torch; or a .safetensors file)
    -> find the state_dict -> detect dialect and version
    -> infer widths/groups/classes from shapes -> build the plan -> for every plan conv: fold its
    BN, check every shape -> check every key was used -> a :class:`Converted`: the spec, the
    plan-named float32 weights, the class names, the source's digest

Nothing is guessed silently: missing keys, unexpected keys, shape mismatches and non-finite
values are all collected and reported by name in one :class:`ConversionError`.

This module knows npshuffle only through its architecture tables (``npshuffle.archs``, which
builds an ``npshuffle.plan``) and the safetensors format reader (``npshuffle.safetensors_file``,
shared with the model file loader); writing the result as a model file is
:mod:`weights_convert.write`'s.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, field
from importlib import resources

import numpy as np

from kernels.reference import shuffle_permutation
from npshuffle.archs import ArchError, V1Spec, V2Spec, build_plan, check_spec, variant_name
from npshuffle.safetensors_file import SafetensorsError, SafetensorsReader, looks_like_safetensors
from npshuffle.strict_json import DuplicateKeyError, is_text, refuse_duplicate_keys

from . import megvii, torchvision
from .fold import fold_batchnorm, permute_output_channels
from .keymap import ConversionError
from .messages import show
from .torch_pickle import CheckpointError, load_torch_checkpoint, open_regular_file

DIALECT_MODULES = (torchvision, megvii)
WRAPPER_KEYS = ("state_dict", "model", "model_state_dict", "net")
IGNORED_SUFFIXES = (".num_batches_tracked",)
BN_EPS = 1e-5
MAX_CLASS_FILE_BYTES = 16 * 2**20
HF_CONFIG = "config.json"  # Hugging Face's model folder: the weights beside it, class names in its id2label
_PROBLEMS_SHOWN_CHARS = 300  # a ConversionError lists its first problems, then how many more


@dataclass
class Converted:
    """A converted network, ready to save: folded float32 weights keyed by plan tensor name.

    ``source``: the checkpoint's file name and SHA-256; ``class_names``: from a classes file, the
    ImageNet names for 1000 classes, else None; ``recipe``: where the preprocessing its authors
    evaluate with differs from the dialect's default (torchvision's x1.5/x2.0: ``{"resize": 232}``).
    """

    spec: V1Spec | V2Spec
    dialect: str
    weights: dict[str, np.ndarray]
    source: dict
    class_names: list[str] | None = None
    recipe: dict = field(default_factory=dict)


def find_state_dict(obj: object, path: str) -> dict[str, np.ndarray]:
    """Unwrap ``{'state_dict': ...}`` / ``{'model': ...}`` and strip a ``module.`` prefix."""
    for _ in range(3):
        if isinstance(obj, dict) and not all(isinstance(v, np.ndarray) for v in obj.values()):
            inner = next((obj[k] for k in WRAPPER_KEYS if isinstance(obj.get(k), dict)), None)
            if inner is None:
                break
            obj = inner
    if not isinstance(obj, dict) or not obj:
        raise ConversionError(f"{path}: no state_dict found (the checkpoint holds a {type(obj).__name__})")
    not_strings = [k for k in obj if type(k) is not str]
    if not_strings:
        raise ConversionError(
            f"{path}: no state_dict found: key {show(not_strings[0])} is a {type(not_strings[0]).__name__}, "
            f"not a string ({len(not_strings)} such keys)"
        )
    not_tensors = [k for k, v in obj.items() if not isinstance(v, np.ndarray)]
    if not_tensors:
        raise ConversionError(
            f"{path}: no state_dict found: top-level keys {show(sorted(obj)[:8])} are not all tensors "
            f"(and none of {WRAPPER_KEYS} holds one)"
        )
    if all(str(k).startswith("module.") for k in obj):
        obj = {k[len("module."):]: v for k, v in obj.items()}
    return obj


def detect(state_dict: dict) -> tuple[object, int]:
    """(dialect module, version) of a state_dict, or a ConversionError saying what was seen."""
    for module in DIALECT_MODULES:
        version = module.detect_version(state_dict)
        if version is not None:
            return module, version
    if "stem.weight" in state_dict and "classifier.weight" in state_dict:  # the plan's own tensor names
        raise ConversionError("already an npshuffle model's folded weights, not a checkpoint: use the file as a "
                              "model as it is (--model FILE), or `npshuffle export` it to another format")
    sample = ", ".join(list(state_dict)[:5])
    raise ConversionError(
        "not a ShuffleNet checkpoint this converter knows: expected torchvision keys (conv1.0.weight, "
        f"stage2.*, ...) or Megvii ShuffleNet-Series keys (first_conv.0.weight, features.*); first keys: {sample}"
    )


def convert_state_dict(state_dict: dict[str, np.ndarray], *, path: str = "<state_dict>") -> Converted:
    """Fold and check a state_dict; returns the plan-named weights. Raises ConversionError."""
    try:
        module, version = detect(state_dict)
    except ConversionError as exc:
        raise ConversionError(f"{path}: {exc}") from None
    try:
        spec = module.infer_spec(state_dict, version)
        check_spec(spec)
    except ConversionError as exc:
        raise ConversionError(f"{path}: {exc}") from None
    except ArchError as exc:
        raise ConversionError(f"{path}: the inferred architecture is inconsistent: {exc}") from None
    plan = build_plan(spec, module.DIALECT)
    keys = module.key_map(plan, spec)
    expected = plan.weight_shapes()
    used: set[str] = set()
    problems: list[str] = []
    weights: dict[str, np.ndarray] = {}

    def take(key: str, shape: tuple[int, ...] | None) -> np.ndarray | None:
        if key not in state_dict:
            problems.append(f"missing key {key}")
            return None
        used.add(key)
        value = state_dict[key]
        if shape is not None and tuple(value.shape) != shape:
            problems.append(f"{key} has shape {tuple(value.shape)}, expected {shape}")
            return None
        if not np.issubdtype(value.dtype, np.floating):
            problems.append(f"{key} has dtype {value.dtype}, expected floating point")
            return None
        if not np.isfinite(value).all():
            problems.append(f"{key} holds NaN or infinite values")
            return None
        return value

    for layer in plan.convs():
        conv, bn = keys.convs[layer.name]
        w = take(f"{conv}.weight", expected[f"{layer.name}.weight"])
        b = take(f"{conv}.bias", layer.bias_shape) if f"{conv}.bias" in state_dict else None
        stats = [take(f"{bn}.{p}", layer.bias_shape) for p in ("weight", "bias", "running_mean", "running_var")]
        if w is None or any(s is None for s in stats):
            continue
        if (stats[3] < 0).any():
            problems.append(f"{bn}.running_var has negative values")
            continue
        with np.errstate(over="ignore", invalid="ignore"):
            folded = fold_batchnorm(w, b, *stats, eps=BN_EPS)
        if not all(np.isfinite(a).all() for a in folded):
            problems.append(f"folding {bn} into {conv} overflows float32 (huge weights, or running_var near 0?)")
            continue
        weights[f"{layer.name}.weight"], weights[f"{layer.name}.bias"] = folded

    weight_key, bias_key = keys.classifier
    c = plan.classifier
    fc_w = take(weight_key, (c.num_classes, c.in_features))
    fc_b = take(bias_key, (c.num_classes,)) if bias_key else np.zeros(c.num_classes, np.float32)
    if fc_w is not None and fc_b is not None:
        with np.errstate(over="ignore"):
            classifier = fc_w.astype(np.float32), fc_b.astype(np.float32)
        if all(np.isfinite(a).all() for a in classifier):
            weights[f"{c.name}.weight"], weights[f"{c.name}.bias"] = classifier
        else:
            problems.append(f"{weight_key} or its bias does not fit in float32")

    unexpected = sorted(k for k in state_dict if k not in used and not k.endswith(IGNORED_SUFFIXES))
    if unexpected:
        more = f" ({len(unexpected)} in all)" if len(unexpected) > 5 else ""
        problems.append(f"unexpected keys: {', '.join(unexpected[:5])}{more}")
    if problems:
        raise ConversionError(f"{path}: {len(problems)} problem(s): {_first_problems(problems)}")

    if spec.version == 1 and module.DIALECT == "megvii":
        _move_megvii_shuffle_before_depthwise(plan, weights)
    return Converted(spec, module.DIALECT, weights, {})


def _first_problems(problems: list[str]) -> str:
    """The problems that fit in about :data:`_PROBLEMS_SHOWN_CHARS` characters, and how many more there are.

    (A checkpoint of another network can have hundreds; the message stays one short line.)
    """
    shown: list[str] = []
    length = 0
    for problem in problems:
        if shown and length + len(problem) > _PROBLEMS_SHOWN_CHARS:
            break
        shown.append(problem)
        length += len(problem) + 2
    rest = len(problems) - len(shown)
    return "; ".join(shown) + (f"; and {rest} more" if rest else "")


def _move_megvii_shuffle_before_depthwise(plan, weights: dict[str, np.ndarray]) -> None:
    """Megvii's V1 shuffles after the depthwise conv; npshuffle's V1 plan shuffles before it.

    shuffle(dw(y)) == dw'(shuffle(y)) when dw' uses filter perm[i] for channel i, where perm is the
    shuffle's index map (shuffle(y)[:, i] == y[:, perm[i]]).
    """
    for unit in plan.units:
        if unit.groups > 1:
            perm = shuffle_permutation(unit.dw.out_channels, unit.groups, unit.shuffle)
            w, b = weights[f"{unit.dw.name}.weight"], weights[f"{unit.dw.name}.bias"]
            weights[f"{unit.dw.name}.weight"], weights[f"{unit.dw.name}.bias"] = permute_output_channels(w, b, perm)


def read_class_names(path: str, num_classes: int) -> list[str]:
    """Class names from a ``class_indices.json`` (``{"0": "daisy", ...}`` or a list) or a text file (one per line)."""
    text = _read_text(path, "class names")
    if path.endswith(".json"):
        names = _class_names_from_json(_parse_json(text, path, _EXPECTED_NAMES), path)
    else:
        names = [line.strip() for line in text.splitlines() if line.strip()]
    if len(names) != num_classes:
        raise ConversionError(f"{path}: {len(names)} class names, but the checkpoint has {num_classes} classes")
    return names


def config_class_names(checkpoint: str, num_classes: int) -> list[str] | None:
    """Class names from the Hugging Face ``config.json`` beside ``checkpoint``: its ``id2label``
    (``{"0": "daisy", ...}``). None when there is no such file, or it has no ``id2label``; a
    ConversionError when its id2label is malformed or names another number of classes (the
    user can then name them with ``--classes``)."""
    path = os.path.join(os.path.dirname(checkpoint), HF_CONFIG)
    if not os.path.isfile(path):
        return None
    instead = "; give --classes FILE to name the classes instead"  # (config.json is then not read at all)
    try:
        config = _parse_json(_read_text(path, "its id2label"), path, "expected a JSON object")
        if not isinstance(config, dict):
            raise ConversionError(f"{path}: expected a JSON object, not a JSON {type(config).__name__}")
        if "id2label" not in config:
            return None
        names = _class_names_from_json(config["id2label"], f"{path} (id2label)")
    except ConversionError as exc:
        raise ConversionError(f"{exc}{instead}") from None
    if len(names) != num_classes:
        raise ConversionError(f"{path}: id2label names {len(names)} classes, but the checkpoint has {num_classes}"
                              f"{instead}")
    return names


def _read_text(path: str, what: str) -> str:
    """A small UTF-8 text file (at most :data:`MAX_CLASS_FILE_BYTES`)."""
    try:
        with open_regular_file(path) as f:
            raw = f.read(MAX_CLASS_FILE_BYTES + 1)
        if len(raw) > MAX_CLASS_FILE_BYTES:
            raise ConversionError(f"{path}: a file of more than {MAX_CLASS_FILE_BYTES:,} bytes; too large to read "
                                  f"{what} from")
        return raw.decode("utf-8")
    except (OSError, UnicodeDecodeError, CheckpointError) as exc:
        raise ConversionError(f"{path}: cannot read {what} ({getattr(exc, 'strerror', None) or exc})") from None


_EXPECTED_NAMES = 'expected a JSON object {"0": "name", "1": ...} with keys 0..n-1, or a list of names'


def _parse_json(text: str, path: str, expected: str) -> object:
    try:
        return json.loads(text, object_pairs_hook=refuse_duplicate_keys)
    except DuplicateKeyError as exc:
        raise ConversionError(f"{path}: names key {show(exc.args[0])} twice in one JSON object: which one is "
                              "meant is ambiguous") from None
    except RecursionError:
        raise ConversionError(f"{path}: {expected}; this JSON is nested too deeply to read") from None
    except ValueError as exc:  # JSONDecodeError, or an integer too long to convert
        raise ConversionError(f"{path}: not valid JSON ({exc})") from None


def _class_names_from_json(data: object, path: str) -> list[str]:
    """``{"0": "daisy", "1": ...}`` or ``["daisy", ...]``; names are strings (or numbers, written as strings)."""
    if isinstance(data, dict):
        missing = next((i for i in range(len(data)) if str(i) not in data), None)
        if missing is not None:
            raise ConversionError(f"{path}: {_EXPECTED_NAMES} (no key {str(missing)!r})")
        names = [data[str(i)] for i in range(len(data))]
    elif isinstance(data, list):
        names = data
    else:
        raise ConversionError(f"{path}: {_EXPECTED_NAMES}, not a JSON {type(data).__name__}")
    for index, name in enumerate(names):
        if type(name) not in (str, int, float):  # (a null too: it is no name, not the class "None")
            raise ConversionError(f"{path}: class names must be strings, found {show(name)}")
        if type(name) is str and not is_text(name):  # (the model file would refuse it too, naming no source)
            raise ConversionError(f"{path}: class name {index} ({show(name)}) holds a lone surrogate (a \\ud800 "
                                  "escape), which is not text")
    return [str(n) for n in names]


def imagenet_class_names() -> list[str]:
    """The 1000 ImageNet-1k class names shipped with npshuffle."""
    text = resources.files("npshuffle").joinpath("data/imagenet_classes.txt").read_text(encoding="utf-8")
    return [line.strip() for line in text.splitlines() if line.strip()]


# torchvision evaluates its own x1.5 and x2.0 ImageNet weights with Resize(232), the others with 256
TORCHVISION_RESIZE_232 = ("shufflenet_v2_x1_5", "shufflenet_v2_x2_0")


def authors_recipe(converted: Converted) -> dict:
    """Where the preprocessing a checkpoint's authors evaluate with differs from its dialect's
    default recipe (the caller may still override it, e.g. with --resize)."""
    if (converted.dialect == "torchvision" and converted.spec.num_classes == 1000
            and variant_name(converted.spec) in TORCHVISION_RESIZE_232):
        return {"resize": 232}
    return {}


def sha256_of(path: str) -> str:
    digest = hashlib.sha256()
    with open_regular_file(path) as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def load_checkpoint(path: str) -> tuple[object, str]:
    """(the checkpoint's object tree with its tensors as NumPy arrays, its format): a safetensors
    file (told by its name or its first bytes) gives its tensors, a flat state dict, and
    ``"safetensors"``; a ``torch.save`` file (zip or legacy) its tree and ``"torch"``. Raises
    ConversionError or CheckpointError, or OSError when the file cannot be opened."""
    with open_regular_file(path) as f:
        head = f.read(16)
    if not looks_like_safetensors(path, head):
        return load_torch_checkpoint(path), "torch"
    try:
        with SafetensorsReader(path) as reader:
            return reader.read_all(), "safetensors"
    except SafetensorsError as exc:
        raise ConversionError(str(exc)) from None


def convert_checkpoint(checkpoint: str | os.PathLike, *, classes: str | os.PathLike | None = None) -> Converted:
    """Load, check and fold ``checkpoint`` (``.pth``/``.pt``/``.pth.tar`` or ``.safetensors``).
    Raises ConversionError.

    ``classes``: a class_indices.json or labels file (default: for a ``.safetensors`` file, the
    ``id2label`` of a Hugging Face ``config.json`` beside it; else ImageNet names for 1000 classes,
    else none: the model file then names them class_0..class_{n-1}).
    """
    checkpoint = str(checkpoint)
    try:
        obj, file_format = load_checkpoint(checkpoint)
        digest = sha256_of(checkpoint)
    except CheckpointError as exc:
        raise ConversionError(str(exc)) from None
    except OSError as exc:
        raise ConversionError(f"{checkpoint}: cannot read the checkpoint ({exc.strerror or exc})") from None
    converted = convert_state_dict(find_state_dict(obj, checkpoint), path=checkpoint)
    converted.source = {"file": os.path.basename(checkpoint), "sha256": digest}
    n = converted.spec.num_classes
    if classes:
        converted.class_names = read_class_names(str(classes), n)
    elif file_format == "safetensors" and (names := config_class_names(checkpoint, n)) is not None:
        converted.class_names = names
        converted.source["class_names"] = HF_CONFIG
    elif n == 1000:
        converted.class_names = imagenet_class_names()
    converted.recipe = authors_recipe(converted)
    return converted
