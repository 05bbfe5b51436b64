"""Architecture tables: parameter counts, channel rules, plans vs the torch reference graphs."""

from __future__ import annotations

import pytest
import torch

from npshuffle.archs import (
    DIALECTS,
    V1_CHANNELS,
    WIDTHS,
    ArchError,
    V1Spec,
    V2Spec,
    build_plan,
    check_spec,
    count_parameters,
    spec_from_dict,
    spec_to_dict,
    v1_spec,
    v2_spec,
    variant_name,
)
from npshuffle.training.torch_ref import build_torch_model
from tests.conftest import WEIGHTS, require

TORCHVISION_V2_PARAMS = {"0.5x": 1_366_792, "1.0x": 2_278_604, "1.5x": 3_503_624, "2.0x": 7_393_996}


@pytest.mark.parametrize("width", WIDTHS)
def test_v2_parameter_counts_equal_torchvision(width):
    spec = v2_spec(width)
    assert count_parameters(build_plan(spec, "torchvision"), "torchvision") == TORCHVISION_V2_PARAMS[width]
    model = build_torch_model(spec, "torchvision")
    assert sum(p.numel() for p in model.parameters()) == TORCHVISION_V2_PARAMS[width]


@pytest.mark.parametrize("groups", [3, 8])
def test_v1_parameter_counts_equal_megvii_checkpoints(groups):
    checkpoint = require(WEIGHTS / f"ShuffleNetV1_g{groups}_0.5x.pth.tar")
    state = torch.load(checkpoint, map_location="cpu", weights_only=True)["state_dict"]
    published = sum(v.numel() for k, v in state.items() if "running_" not in k and "num_batches" not in k)
    spec = v1_spec(groups, "0.5x")
    assert count_parameters(build_plan(spec, "megvii"), "megvii") == published
    model = build_torch_model(spec, "megvii")
    model.load_state_dict({k.removeprefix("module."): v for k, v in state.items()}, strict=True)


@pytest.mark.parametrize("groups,width", sorted(V1_CHANNELS))
def test_every_v1_table_row_builds_in_both_dialects(groups, width):
    spec = v1_spec(groups, width)
    check_spec(spec)
    for dialect in DIALECTS:
        plan = build_plan(spec, dialect)
        model = build_torch_model(spec, dialect)
        assert sum(p.numel() for p in model.parameters()) == count_parameters(plan, dialect)
    assert variant_name(spec) == f"shufflenet_v1_g{groups}_x{width[:-1].replace('.', '_')}"


def test_v1_table_follows_its_rounding_rule():
    paper = {g: V1_CHANNELS[(g, "1.0x")][1:] for g in (1, 2, 3, 4, 8)}
    for (groups, width), (_, *stages) in V1_CHANNELS.items():
        scale = float(width[:-1])
        step = 4 * groups
        assert stages == [int(c * scale / step + 0.5) * step for c in paper[groups]]


@pytest.mark.parametrize("width", WIDTHS)
def test_v2_macs_match_the_papers_budget(width):
    # the paper's FLOPs column (multiply-adds): 41M, 146M, 299M, 591M for the authors' wiring
    expected = {"0.5x": 41e6, "1.0x": 146e6, "1.5x": 299e6, "2.0x": 591e6}[width]
    assert abs(build_plan(v2_spec(width), "megvii").macs() - expected) / expected < 0.02


def test_spec_round_trips_through_json_form():
    for spec in (v2_spec("1.5x", 5), v1_spec(8, "0.5x", 1000), V2Spec(8, (16, 32), 64, (1, 2), 3)):
        assert spec_from_dict(spec_to_dict(spec)) == spec


def test_custom_small_widths_are_expressible():
    spec = V1Spec(groups=2, stem_channels=4, stage_channels=(16, 32), stage_repeats=(2, 1), num_classes=3)
    plan = build_plan(spec, "torchvision")
    assert len(plan.units) == 3 and plan.units[0].pw1.groups == 1 and plan.units[1].pw1.groups == 2
    assert variant_name(spec) == "shufflenet_v1_g2_custom"


@pytest.mark.parametrize(
    "spec,message",
    [
        (V1Spec(3, 12, (100, 200, 400)), "bottleneck"),
        (V1Spec(8, 12, (192, 384, 768)), "branch width"),
        (V2Spec(24, (50, 97), 64, (1, 1)), "even"),
        (V2Spec(24, (48,), 64, (1, 1)), "equal length"),
        (V2Spec(0, (48,), 64, (1,)), "positive"),
    ],
)
def test_inconsistent_specs_are_refused(spec, message):
    with pytest.raises(ArchError, match=message):
        check_spec(spec)


def test_unknown_table_entries_are_refused():
    with pytest.raises(ArchError, match="groups=5"):
        v1_spec(5)
    with pytest.raises(ArchError, match="3.0x"):
        v2_spec("3.0x")
    with pytest.raises(ArchError, match="dialect"):
        build_plan(v2_spec(), "caffe")
