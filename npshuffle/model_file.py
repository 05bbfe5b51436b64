"""The npshuffle model file: one ``.npz`` holding folded weights and a JSON description.

Layout (an ordinary NumPy ``.npz``, read with ``allow_pickle=False``, so loading runs no code):

* one float32 array per plan tensor, named as in :meth:`npshuffle.plan.Plan.weight_shapes`
  (``stem.weight``, ``units.3.pw1.bias``, ``classifier.weight``, ...);
* ``__metadata__``: a uint8 array holding UTF-8 JSON::

    {"format": "npshuffle-model", "format_version": 1,
     "arch": {...V1Spec/V2Spec fields...}, "dialect": "torchvision" | "megvii",
     "variant": "shufflenet_v2_x1_0", "num_classes": 1000, "class_names": [...],
     "preprocess": {...recipe...}, "source": {"file": ..., "sha256": ...}, ...}

:func:`load_model_file` checks every field, every tensor's presence, shape, dtype and finiteness,
and refuses anything else with a :class:`ModelFileError` that names the file and the problem.
"""

from __future__ import annotations

import json
import os
import zipfile
from dataclasses import dataclass

import numpy as np

from .archs import DIALECTS, ArchError, V1Spec, V2Spec, build_plan, spec_from_dict, spec_to_dict
from .plan import Plan

FORMAT = "npshuffle-model"
FORMAT_VERSION = 1
METADATA_KEY = "__metadata__"

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


def check_recipe(recipe: dict) -> dict:
    """Validate a preprocessing recipe; returns it with numbers normalised. Raises ValueError."""
    required = {"resize", "crop", "interpolation", "channel_order", "scale", "mean", "std"}
    missing = required - set(recipe)
    if missing:
        raise ValueError(f"preprocessing recipe lacks {sorted(missing)}")
    out = dict(recipe)
    out["resize"], out["crop"] = int(recipe["resize"]), int(recipe["crop"])
    if not 0 < out["crop"] <= out["resize"]:
        raise ValueError(f"recipe needs 0 < crop <= resize, got crop={out['crop']}, resize={out['resize']}")
    if recipe["channel_order"] not in ("RGB", "BGR"):
        raise ValueError(f"recipe channel_order must be RGB or BGR, got {recipe['channel_order']!r}")
    if recipe["interpolation"] not in ("bilinear", "bicubic", "nearest"):
        raise ValueError(f"recipe interpolation must be bilinear, bicubic or nearest, got {recipe['interpolation']!r}")
    out["scale"] = float(recipe["scale"])
    for key in ("mean", "std"):
        values = [float(v) for v in recipe[key]]
        if len(values) != 3 or not all(np.isfinite(values)):
            raise ValueError(f"recipe {key} must be 3 finite numbers, got {recipe[key]!r}")
        out[key] = values
    if min(out["std"]) <= 0:
        raise ValueError(f"recipe std must be positive, got {out['std']}")
    return out


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
    """Validate and write a model file; returns the metadata written.

    ``weights`` must hold exactly the plan's tensors (folded BN, see the module docstring).
    ``extra`` adds metadata fields (source, accuracy, licence, ...).
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
    arrays = {name: np.ascontiguousarray(value, dtype=np.float32) for name, value in weights.items()}
    _check_contents(str(path), metadata, plan, arrays)
    arrays[METADATA_KEY] = np.frombuffer(json.dumps(metadata).encode("utf-8"), dtype=np.uint8)
    with open(path, "wb") as f:
        np.savez_compressed(f, **arrays)
    return metadata


def load_model_file(path: str | os.PathLike) -> ModelFile:
    """Read and validate a model file. Raises :class:`ModelFileError` (never a numpy traceback)."""
    path = str(path)
    if not os.path.isfile(path):
        raise ModelFileError(f"{path}: no such model file")
    try:
        with np.load(path, allow_pickle=False) as npz:
            arrays = {name: npz[name] for name in npz.files}
    except (OSError, ValueError, zipfile.BadZipFile, EOFError, KeyError) as exc:
        raise ModelFileError(
            f"{path}: not a readable npshuffle model file ({type(exc).__name__}: {exc}); "
            "make one with `npshuffle convert CHECKPOINT -o MODEL.npz`"
        ) from None
    if METADATA_KEY not in arrays:
        raise ModelFileError(f"{path}: no {METADATA_KEY} entry: not an npshuffle model file")
    try:
        metadata = json.loads(arrays.pop(METADATA_KEY).tobytes().decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ModelFileError(f"{path}: its metadata is not valid JSON ({exc})") from None
    if not isinstance(metadata, dict) or metadata.get("format") != FORMAT:
        raise ModelFileError(f"{path}: not an npshuffle model file (format field is not {FORMAT!r})")
    if metadata.get("format_version") != FORMAT_VERSION:
        raise ModelFileError(
            f"{path}: model format version {metadata.get('format_version')!r}; this npshuffle reads version "
            f"{FORMAT_VERSION}: re-convert the checkpoint with this version"
        )
    try:
        spec = spec_from_dict(metadata.get("arch"))
        dialect = metadata.get("dialect")
        if dialect not in DIALECTS:
            raise ArchError(f"unknown dialect {dialect!r}")
        plan = build_plan(spec, dialect)
        metadata["preprocess"] = check_recipe(metadata.get("preprocess") or {})
    except (ArchError, ValueError, TypeError) as exc:
        raise ModelFileError(f"{path}: {exc}") from None
    _check_contents(path, metadata, plan, arrays)
    return ModelFile(spec, dialect, plan, arrays, metadata)


def _check_contents(path: str, metadata: dict, plan: Plan, arrays: dict[str, np.ndarray]) -> None:
    expected = plan.weight_shapes()
    problems = []
    names = metadata.get("class_names")
    if not isinstance(names, list) or len(names) != plan.classifier.num_classes or not all(
        isinstance(n, str) for n in names
    ):
        problems.append(f"class_names must be a list of {plan.classifier.num_classes} strings")
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
        raise ModelFileError(f"{path}: " + "; ".join(problems))
