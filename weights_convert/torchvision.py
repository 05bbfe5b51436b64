"""torchvision-style checkpoints: torchvision's ShuffleNetV2 (and fine-tuned copies of it), and
npshuffle's torchvision-style V1 (see ``npshuffle.training.torch_ref.TorchvisionV1``).

V2 keys: ``conv1.{0,1}``, ``stage{2,3,4}.{j}.branch1.{0,1,2,3}`` (stride-2 units only),
``stage{s}.{j}.branch2.{0,1,3,4,5,6}``, ``conv5.{0,1}``, ``fc.{weight,bias}``.
V1 keys: ``conv1.{0,1}``, ``stage{s}.{j}.branch.{0,1,4,5,6,7}``, ``fc.{weight,bias}``.
"""

from __future__ import annotations

import re

from npshuffle.archs import V1Spec, V2Spec
from npshuffle.plan import Plan

from .keymap import KeyMap, shape_of

DIALECT = "torchvision"


def detect_version(state_dict: dict) -> int | None:
    """2 or 1 if ``state_dict`` looks like this dialect's V2 / V1, else None."""
    if "conv1.0.weight" not in state_dict:
        return None
    if "conv5.0.weight" in state_dict or "stage2.0.branch2.0.weight" in state_dict:
        return 2
    if "stage2.0.branch.0.weight" in state_dict:
        return 1
    return None


_STAGE_UNIT = re.compile(r"stage([1-9][0-9]{0,5})\.([0-9]{1,6})\.")


def _stages(state_dict: dict) -> list[tuple[str, int]]:
    """[(stage name, number of units), ...] in order: stage2, stage3, ...

    One pass over the keys (a scan per stage would be quadratic in a file that names 20,000 stages).
    """
    units: dict[int, set[int]] = {}
    for key in state_dict:
        match = _STAGE_UNIT.match(key)
        if match:
            units.setdefault(int(match[1]), set()).add(int(match[2]))
    stages = []
    index = 2
    while index in units:
        stages.append((f"stage{index}", len(units[index])))
        index += 1
    return stages


def infer_spec(state_dict: dict, version: int) -> V1Spec | V2Spec:
    stem = shape_of(state_dict, "conv1.0.weight")[0]
    stages = _stages(state_dict)
    repeats = tuple(n for _, n in stages)
    num_classes = shape_of(state_dict, "fc.weight", 2)[0]
    if version == 2:
        widths = tuple(
            shape_of(state_dict, f"{s}.0.branch1.2.weight")[0] + shape_of(state_dict, f"{s}.0.branch2.5.weight")[0]
            for s, _ in stages
        )
        head = shape_of(state_dict, "conv5.0.weight")[0]
        return V2Spec(stem, widths, head, repeats, num_classes)
    mid = shape_of(state_dict, "stage2.0.branch.4.weight")[0]
    groups = mid // max(1, shape_of(state_dict, "stage2.0.branch.6.weight")[1])
    widths, cin = [], stem
    for s, _ in stages:
        widths.append(cin + shape_of(state_dict, f"{s}.0.branch.6.weight")[0])
        cin = widths[-1]
    return V1Spec(groups, stem, tuple(widths), repeats, num_classes)


def key_map(plan: Plan, spec: V1Spec | V2Spec) -> KeyMap:
    keys = KeyMap(classifier=("fc.weight", "fc.bias"))
    keys.add_conv_bn("stem", "conv1.0")
    unit_prefixes = [f"stage{s + 2}.{j}" for s, n in enumerate(spec.stage_repeats) for j in range(n)]
    for unit, prefix in zip(plan.units, unit_prefixes, strict=True):
        if spec.version == 2:
            parts = {"pw1": "branch2.0", "dw": "branch2.3", "pw2": "branch2.5"}
            if unit.stride == 2:
                parts |= {"proj_dw": "branch1.0", "proj_pw": "branch1.2"}
        else:
            parts = {"pw1": "branch.0", "dw": "branch.4", "pw2": "branch.6"}
        for layer, conv in parts.items():
            keys.add_conv_bn(f"{unit.name}.{layer}", f"{prefix}.{conv}")
    if plan.head is not None:
        keys.add_conv_bn("head", "conv5.0")
    return keys
