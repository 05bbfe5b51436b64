"""Checkpoint in, model file out: :func:`convert_file`, behind ``python -m weights_convert`` and
``npshuffle convert``.

The converter (:mod:`weights_convert.convert`) knows npshuffle only through its architecture
tables; the model file format is npshuffle's (``npshuffle.model_file`` reads it, and holds each
dialect's default preprocessing recipe and the recipe check). This thin layer joins the two, and
is the one module of weights_convert that imports ``npshuffle.model_file``
(``tests/test_import_rules.py``).
"""

from __future__ import annotations

import os

from npshuffle.model_file import DEFAULT_RECIPES, ModelFileError, check_recipe, save_model_file

from .convert import convert_checkpoint
from .keymap import ConversionError


def convert_file(
    checkpoint: str | os.PathLike,
    output: str | os.PathLike,
    *,
    classes: str | None = None,
    resize: int | None = None,
    crop: int | None = None,
    extra: dict | None = None,
) -> dict:
    """Convert ``checkpoint`` into the model file ``output``; returns the metadata written.

    ``classes``: a class_indices.json or labels file (default: ImageNet names for 1000 classes,
    else class_0..class_{n-1}). ``resize``/``crop`` override the preprocessing default: the
    dialect's (resize 256, crop 224), except Resize(232) for torchvision's x1.5/x2.0 ImageNet weights.
    ``extra``: more metadata fields (a training run's accuracy, ...).
    """
    checkpoint, output = str(checkpoint), str(output)
    _check_output_path(output)
    converted = convert_checkpoint(checkpoint, classes=classes)
    recipe = {**DEFAULT_RECIPES[converted.dialect], **converted.recipe}
    if resize is not None:
        recipe["resize"] = resize
    if crop is not None:
        recipe["crop"] = crop
    try:
        recipe = check_recipe(recipe)
    except ValueError as exc:
        raise ConversionError(f"bad preprocessing override: {exc}") from None
    try:  # save_model_file writes a temporary file and renames it: a kill never leaves half a model at output
        return save_model_file(
            output, converted.spec, converted.dialect, converted.weights,
            class_names=converted.class_names, recipe=recipe, extra={"source": converted.source, **(extra or {})},
        )
    except ModelFileError as exc:  # the weights were checked by convert_state_dict; class names or metadata too
        # large for a .safetensors header (escaped twice there) are refused here
        raise ConversionError(str(exc)) from None
    except OSError as exc:
        raise ConversionError(f"{output}: cannot write the model file ({exc.strerror or exc})") from None


def _check_output_path(output: str) -> None:
    """Refuse an output that is a folder, lies in a missing folder or is named for a format that
    is not written (any name but ``.safetensors`` gets an .npz archive: ``-o model.onnx`` wrote
    a zip under that name) before any work is done."""
    if os.path.isdir(output):
        raise ConversionError(f"{output}: is a folder; give the model file to write, e.g. {output}/model.npz")
    suffix = os.path.splitext(output)[1].lower()
    if suffix not in (".npz", ".safetensors"):
        named = f"a {suffix} name" if suffix else "no extension"
        onnx = "; for ONNX, convert to an .npz and `npshuffle export` it to .onnx" if suffix == ".onnx" else ""
        raise ConversionError(f"{output}: {named}, but convert writes .npz or .safetensors model files{onnx}")
    folder = os.path.dirname(os.path.abspath(output))
    if not os.path.isdir(folder):
        raise ConversionError(f"{output}: the folder {folder} does not exist")
