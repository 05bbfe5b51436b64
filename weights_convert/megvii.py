"""Megvii ShuffleNet-Series checkpoints (megvii-model/ShuffleNet-Series, MIT licence).

V1 keys: ``first_conv.{0,1}``, ``features.{i}.branch_main_1.{0,1,3,4}``,
``features.{i}.branch_main_2.{0,1}``, ``classifier.0.weight`` (no bias).
V2 keys: ``first_conv.{0,1}``, ``features.{i}.branch_main.{0,1,3,4,5,6}``,
``features.{i}.branch_proj.{0,1,2,3}`` (stride-2 units only), ``conv_last.{0,1}``,
``classifier.0.weight``.

Units are numbered across stages (``features.0`` ... ``features.15``), so stage boundaries are
recovered from shapes: a stride-2 unit's output width is its input width plus its branch's
(it concatenates the pooled input), a stride-1 unit's equals its input width.
"""

from __future__ import annotations

from npshuffle.archs import V1Spec, V2Spec
from npshuffle.plan import Plan

from .keymap import ConversionError, KeyMap, numbered_children, shape_of

DIALECT = "megvii"


def detect_version(state_dict: dict) -> int | None:
    if "first_conv.0.weight" not in state_dict:
        return None
    if "features.0.branch_main_1.0.weight" in state_dict:
        return 1
    if "features.0.branch_main.0.weight" in state_dict:
        return 2
    return None


def _stages_from_strides(strides: list[int], widths_out: list[int]) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """Group consecutive units into stages, each starting at a stride-2 unit."""
    if not strides or strides[0] != 2:
        raise ConversionError("cannot work out the architecture: features.0 is not a downsampling unit")
    channels, repeats = [], []
    for stride, width in zip(strides, widths_out, strict=True):
        if stride == 2:
            channels.append(width)
            repeats.append(0)
        repeats[-1] += 1
    return tuple(channels), tuple(repeats)


def infer_spec(state_dict: dict, version: int) -> V1Spec | V2Spec:
    stem = shape_of(state_dict, "first_conv.0.weight")[0]
    units = numbered_children(state_dict, "features.")
    if units != list(range(len(units))):
        raise ConversionError(f"features.* units are not numbered 0..n-1: found {units}")
    num_classes, features = shape_of(state_dict, "classifier.0.weight", 2)
    strides, widths = [], []
    if version == 2:
        for i in units:
            main_out = shape_of(state_dict, f"features.{i}.branch_main.5.weight")[0]
            if f"features.{i}.branch_proj.0.weight" in state_dict:
                strides.append(2)
                widths.append(shape_of(state_dict, f"features.{i}.branch_proj.2.weight")[0] + main_out)
            else:
                strides.append(1)
                widths.append(2 * shape_of(state_dict, f"features.{i}.branch_main.0.weight")[1])
        channels, repeats = _stages_from_strides(strides, widths)
        head = shape_of(state_dict, "conv_last.0.weight")[0]
        return V2Spec(stem, channels, head, repeats, num_classes)
    mid = shape_of(state_dict, "features.0.branch_main_1.3.weight")[0]
    groups = mid // max(1, shape_of(state_dict, "features.0.branch_main_2.0.weight")[1])
    cin = stem
    for i in units:
        branch_out = shape_of(state_dict, f"features.{i}.branch_main_2.0.weight")[0]
        next_in = (
            features if i == units[-1]
            else shape_of(state_dict, f"features.{i + 1}.branch_main_1.0.weight")[1] * groups
        )
        strides.append(2 if next_in == cin + branch_out else 1)
        widths.append(next_in)
        cin = next_in
    channels, repeats = _stages_from_strides(strides, widths)
    return V1Spec(groups, stem, channels, repeats, num_classes)


def key_map(plan: Plan, spec: V1Spec | V2Spec) -> KeyMap:
    keys = KeyMap(classifier=("classifier.0.weight", None))
    keys.add_conv_bn("stem", "first_conv.0")
    for i, unit in enumerate(plan.units):
        if spec.version == 2:
            parts = {"pw1": "branch_main.0", "dw": "branch_main.3", "pw2": "branch_main.5"}
            if unit.stride == 2:
                parts |= {"proj_dw": "branch_proj.0", "proj_pw": "branch_proj.2"}
        else:
            parts = {"pw1": "branch_main_1.0", "dw": "branch_main_1.3", "pw2": "branch_main_2.0"}
        for layer, conv in parts.items():
            keys.add_conv_bn(f"{unit.name}.{layer}", f"features.{i}.{conv}")
    if plan.head is not None:
        keys.add_conv_bn("head", "conv_last.0")
    return keys
