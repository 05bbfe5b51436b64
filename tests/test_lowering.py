"""The lowering (``npshuffle.lowering``) and its channel maps (``kernels.channel_map``): the maps
mean what the reference ops do, and every program is well formed (each value written before it
is read, every channel of a value written exactly once, shapes as the plan says). That the
programs compute the right numbers is tested per backend against the plain plan walk
(test_numpy_backend.py, test_numba_backend.py, tests/cuda)."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kernels import reference as ref
from kernels.channel_map import IDENTITY, ChannelMap, shuffle_destination, shuffle_source
from npshuffle.archs import build_plan, v1_spec, v2_spec
from npshuffle.lowering import AvgPool, LoweringError, Pointwise, lower
from npshuffle.plan import V2Unit
from tests.strategies import v1_specs, v2_specs


def random_weights(plan, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {k: rng.standard_normal(s).astype(np.float32) for k, s in plan.weight_shapes().items()}


@given(st.integers(1, 8), st.integers(1, 8), st.sampled_from(["torchvision", "megvii"]))
def test_shuffle_maps_are_the_reference_shuffle_and_its_inverse(groups, per_group, convention):
    c = groups * per_group
    source = shuffle_source(c, groups, convention).indices(c)
    np.testing.assert_array_equal(source, ref.shuffle_permutation(c, groups, convention))
    destination = shuffle_destination(c, groups, convention).indices(c)
    np.testing.assert_array_equal(source[destination], np.arange(c))  # storing at destination shuffles
    x = np.random.default_rng(0).standard_normal((1, c, 2, 2)).astype(np.float32)
    np.testing.assert_array_equal(ref.channel_shuffle(x, groups, convention), x[:, source])


@pytest.mark.parametrize("split", ["halves", "interleaved"])
def test_split_maps_are_the_reference_split(split):
    x = np.arange(2 * 12 * 3 * 3, dtype=np.float32).reshape(2, 12, 3, 3)
    kept, branch = (IDENTITY, ChannelMap(offset=6)) if split == "halves" else \
        (ChannelMap(step=2), ChannelMap(offset=1, step=2))
    a, b = ref.split_channels(x, split)
    np.testing.assert_array_equal(a, x[:, kept.indices(6)])
    np.testing.assert_array_equal(b, x[:, branch.indices(6)])
    assert IDENTITY.is_identity and kept.is_affine and not shuffle_source(12, 3).is_affine


def written_channels(op) -> list[np.ndarray]:
    """The channels of ``op.dst`` that ``op`` writes (one array per store)."""
    if isinstance(op, Pointwise):
        stores = [np.arange(op.out_channels) if op.pool else op.writes.indices(op.out_channels)]
        if op.carry is not None:
            stores.append(op.carry.destination.indices(op.out_channels))
        return stores
    if isinstance(op, AvgPool):
        return [op.writes.indices(op.src.channels)]
    return [np.arange(op.dst.channels)]


@settings(max_examples=40, deadline=None)
@given(st.one_of(v1_specs(), v2_specs()), st.sampled_from(["torchvision", "megvii"]),
       st.integers(8, 80), st.integers(8, 80))
def test_every_program_is_well_formed(spec, dialect, height, width):
    plan = build_plan(spec, dialect)
    program = lower(plan, random_weights(plan))
    shapes = program.shapes(height, width)
    written = {program.image: np.ones(program.image.channels, int)}
    for op in program.ops:
        for value in op.inputs():  # read only once complete
            assert value in written and (written[value] == 1).all(), f"{op.name} reads {value.name} unfinished"
            assert shapes[value][0] == value.channels
        count = written.setdefault(op.dst, np.zeros(op.dst.channels, int))
        for channels in written_channels(op):
            assert channels.min() >= 0 and channels.max() < op.dst.channels, op.name
            np.add.at(count, channels, 1)
        if isinstance(op, Pointwise):  # reads inside its input, residual and carry the size of its output
            assert op.reads.indices(op.in_channels).max() < op.src.channels
            if op.carry is not None:
                assert op.carry.source.indices(op.out_channels).max() < op.carry.value.channels
                assert shapes[op.carry.value][1:] == shapes[op.dst][1:]
            if op.residual is not None:
                assert shapes[op.residual] == shapes[op.dst]
    assert all((count == 1).all() for count in written.values()), "a channel written twice or never"
    assert shapes[program.logits] == (spec.num_classes, 1, 1)
    # the spatial size after the stem, the max-pool and each stride-2 unit, as the plan says
    size = lambda n: plan.stem.output_size(n)  # noqa: E731
    h, w = (size(height) - 1) // 2 + 1, (size(width) - 1) // 2 + 1
    for unit in plan.units:
        h, w = unit.dw.output_size(h), unit.dw.output_size(w)
    assert shapes[program.features] == (plan.classifier.in_features, 1, 1)
    last_unit = [v for v in shapes if v.name == plan.units[-1].name]
    assert shapes[last_unit[0]][1:] == (h, w)


def test_v1_shuffle_is_read_back_by_pw2_with_permuted_depthwise_filters():
    plan = build_plan(v1_spec(3, "0.5x", 10), "torchvision")
    weights = random_weights(plan)
    unit = plan.units[1]  # grouped (the first unit's pw1 is not)
    ops = {op.name: op for op in lower(plan, weights).ops}
    mid = unit.pw1.out_channels
    source = shuffle_source(mid, unit.groups, unit.shuffle)
    assert ops[unit.pw2.name].reads == source and ops[unit.pw1.name].writes.is_identity
    # unshuffled channel c carries the filter of the shuffled channel it becomes
    dw = ops[unit.dw.name]
    np.testing.assert_array_equal(dw.weight[source.indices(mid)], weights[f"{unit.dw.name}.weight"])


def test_a_shuffle_after_unequal_branches_is_refused():
    plan = build_plan(v2_spec("0.5x", 10), "torchvision")
    unit = plan.units[0]
    bad_proj = dataclasses.replace(unit.proj_pw, out_channels=unit.proj_pw.out_channels - 2)
    bad = dataclasses.replace(plan, units=(V2Unit(**{**vars(unit), "proj_pw": bad_proj}), *plan.units[1:]))
    with pytest.raises(LoweringError, match="unequal branches"):
        lower(bad, random_weights(plan))


def test_a_weight_of_the_wrong_shape_is_refused():
    plan = build_plan(v2_spec("0.5x", 10), "megvii")
    weights = random_weights(plan)
    name = plan.units[0].pw1.name
    weights[f"{name}.weight"] = weights[f"{name}.weight"][:-1]
    with pytest.raises(LoweringError, match=name):
        lower(plan, weights)


@pytest.mark.parametrize("module", ["npshuffle/backend_numba.py", "npshuffle/numba_steps.py",
                                    "npshuffle/backend_cuda.py"])
def test_the_fast_backends_run_the_program_not_the_plan(module):
    """Only the lowering turns units into data movement: the fast backends never see a unit type
    (the NumPy backend's ``prepare_reference``, the plain walk of the plan, is the definition)."""
    import ast
    from pathlib import Path

    tree = ast.parse((Path(__file__).resolve().parent.parent / module).read_text())
    names = {alias.name for node in ast.walk(tree) if isinstance(node, ast.ImportFrom) for alias in node.names}
    plan_types = {"V1Unit", "V2Unit", "ConvLayer"}
    assert not names & plan_types, f"{module} imports {names & plan_types}"
