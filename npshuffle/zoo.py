"""The bundled models: a name -> model file table, with where each came from and how good it is.

Model files live in ``npshuffle/models/`` (shipped inside the package, so everything works
offline). Each file carries its own architecture, class names and preprocessing recipe; this table
adds provenance and accuracy. Adding a model = dropping its .npz into ``models/`` + one row here.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from importlib import resources

import numpy as np

from .model_file import METADATA_KEY, ModelFileError, not_a_model_file

MEGVII_SOURCE = "megvii-model/ShuffleNet-Series (MIT licence), converted with weights_convert"


@dataclass(frozen=True)
class ZooEntry:
    name: str
    file: str  # file name inside npshuffle/models/
    task: str
    source: str
    licence: str
    accuracy: str  # what is known about its accuracy, and who measured it


FLOWERS_SOURCE = "trained by npshuffle on TensorFlow flower_photos (CC-BY 2.0 photos)"

ENTRIES = (
    ZooEntry(
        "flowers", "flowers_v1_g3_x0_5.npz", "flower_photos (5 classes)",
        FLOWERS_SOURCE + ", fine-tuned from Megvii's ImageNet ShuffleNet V1 g3 0.5x (MIT), distilled from a g3 + g8 "
        "ensemble", "MIT",
        "flower_photos val top-1 94.4 % (seed-style split, 731 photos, the last epoch; npshuffle eval)",
    ),
    ZooEntry(
        "flowers_v2", "flowers_v2_x0_5.npz", "flower_photos (5 classes)",
        FLOWERS_SOURCE + ", ShuffleNet V2 x0.5 from scratch, distilled from an earlier 'flowers'", "MIT",
        "flower_photos val top-1 88.9 % (seed-style split, 731 photos; npshuffle eval)",
    ),
    ZooEntry(
        "imagenet_v1_g3_x0_5", "imagenet_v1_g3_x0_5.npz", "ImageNet-1k (1000 classes)", MEGVII_SOURCE, "MIT",
        "ImageNet top-1 57.3 % (authors: 42.7 % error)",
    ),
    ZooEntry(
        "imagenet_v1_g8_x0_5", "imagenet_v1_g8_x0_5.npz", "ImageNet-1k (1000 classes)", MEGVII_SOURCE, "MIT",
        "ImageNet top-1 58.8 % (authors: 41.2 % error)",
    ),
)
ZOO = {entry.name: entry for entry in ENTRIES}
DEFAULT_MODEL = "flowers"  # what predict runs without --model / model=


def models_dir():
    return resources.files("npshuffle").joinpath("models")


def bundled_path(entry: ZooEntry) -> str:
    return str(models_dir().joinpath(entry.file))


def available() -> list[ZooEntry]:
    """Zoo entries whose model file is actually present."""
    return [e for e in ENTRIES if os.path.isfile(bundled_path(e))]


def resolve(name_or_path: str | os.PathLike | None) -> tuple[str, str]:
    """(display name, file path) for a zoo name or a model file path; None means the default model."""
    if name_or_path is None:
        name_or_path = DEFAULT_MODEL
    text = os.fspath(name_or_path)
    if text in ZOO:
        path = bundled_path(ZOO[text])
        if not os.path.isfile(path):
            raise ModelFileError(f"bundled model {text!r} is missing its file {path}: reinstall npshuffle")
        return text, path
    if os.path.exists(text) or text.endswith((".npz", ".safetensors")) or os.sep in text:
        if not os.path.isfile(text):
            raise ModelFileError(not_a_model_file(text))
        return os.path.basename(text), text
    names = ", ".join(e.name for e in available())
    raise ModelFileError(f"unknown model {text!r}: use a bundled model ({names}) or a path to a model file "
                         "(.npz or .safetensors)")


def read_metadata(path: str) -> dict:
    """Just the metadata of a model file (no weights decoded)."""
    try:
        with np.load(path, allow_pickle=False) as npz:
            return json.loads(npz[METADATA_KEY].tobytes().decode("utf-8"))
    except Exception as exc:  # noqa: BLE001 - any failure means: not a model file
        raise ModelFileError(f"{path}: not a readable npshuffle model file ({exc})") from None


def describe_models() -> list[dict]:
    """One row per available bundled model, for ``npshuffle list``."""
    rows = []
    for entry in available():
        path = bundled_path(entry)
        meta = read_metadata(path)
        recipe = meta["preprocess"]
        rows.append({
            "name": entry.name + (" (default)" if entry.name == DEFAULT_MODEL else ""),
            "arch": meta["variant"],
            "dialect": meta["dialect"],
            "classes": meta["num_classes"],
            "params": meta["parameters"],
            "MACs": meta["macs_224"],
            "input": f"{recipe['channel_order']} resize {recipe['resize']} crop {recipe['crop']}",
            "size": os.path.getsize(path),
            "accuracy": meta.get("val_accuracy_text") or entry.accuracy,
            "task": entry.task,
            "source": entry.source,
            "licence": entry.licence,
        })
    return rows
