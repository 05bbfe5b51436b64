"""Every Numba kernel of ``kernels.cpu`` against its ``kernels.reference`` twin.

Each test builds one step the way ``npshuffle.backend_numba`` does (padded channels-last buffers
in a flat workspace, packed weights, offset tables, a step record packed by ``cpu.pack_steps``),
runs it through ``cpu.run_step`` -- split
into 1 to 3 parts, as the threads split it -- and compares with the plain NumPy reference on
random shapes: odd sizes, strides 1 to 3, groups, channel counts on both sides of the 16-lane
and 64-wide tile boundaries, every epilogue.
"""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from npshuffle import kernel_cache

kernel_cache.install_locator()  # (before kernels.cpu is imported, as the backend does: see kernels/cpu/__init__.py)

from kernels import cpu  # noqa: E402
from kernels import reference as ref  # noqa: E402
from kernels.cpu.twins import Workspace  # noqa: E402
from tests.conftest import REPO  # noqa: E402

SETTINGS = settings(max_examples=25, deadline=None)
TOL = 1e-5


# NaNs after a test workspace's buffers: a kernel that reads them spoils its output, one that
# writes them fails run()
GUARD = 64


class Arena(Workspace):
    """A flat float32 workspace holding the buffers of one step (``twins.Workspace``), with NaNs after
    its last buffer."""

    def zeros(self, n: int) -> int:
        return self.add(np.zeros(n, np.float32))

    def array(self) -> np.ndarray:
        """The workspace, with :data:`GUARD` NaNs after the last buffer (see :func:`run`)."""
        return np.concatenate(self.blocks + [np.full(GUARD, np.nan, np.float32)])


def run(step: cpu.Step, ws: np.ndarray, wts=None, itab=None, image=None, pooled=None, nparts: int = 1,
        split: int = cpu.SPLIT_PIXELS) -> None:
    """Run one step with exactly the argument types the backend uses, split into ``nparts`` (each
    run on its own, as the threads run them) as ``split`` says."""
    steps = cpu.pack_steps([step], [split])
    wts = np.zeros(16, np.float32) if wts is None else np.ascontiguousarray(wts, np.float32).ravel()
    itab = np.zeros(16, np.int64) if itab is None else np.ascontiguousarray(itab, np.int64)
    image = np.zeros((1, 1, 1), np.float32) if image is None else image
    pooled = np.zeros(16, np.float32) if pooled is None else pooled
    for part in range(nparts):
        cpu.run_step(ws, wts, itab, steps[0], image, pooled, np.int64(part), np.int64(nparts))
    # (the GEMM micro-kernel works on raw pointers: nothing checks its bounds but this)
    assert np.isnan(ws[-GUARD:]).all(), "the kernel wrote past the last buffer of its workspace"


def buffer(ws: np.ndarray, offset: int, h: int, w: int, stride: int, channels: int, first: int = 0) -> np.ndarray:
    return cpu.from_padded_nhwc(ws[offset:], h, w, stride, channels, first)


def close(ours: np.ndarray, expected: np.ndarray) -> None:
    scale = max(1.0, float(np.abs(expected).max(initial=0.0)))
    np.testing.assert_allclose(ours, expected, rtol=0, atol=TOL * scale)


# --------------------------------------------------------------------------------------------------
# GEMM: 1x1 convs with every input map and epilogue


@st.composite
def pointwise_cases(draw):
    groups = draw(st.sampled_from([1, 1, 2, 3, 4]))
    return dict(
        h=draw(st.integers(1, 9)), w=draw(st.integers(1, 9)), groups=groups,
        cg=draw(st.integers(1, 20)), og=draw(st.sampled_from([1, 5, 16, 17, 20, 24, 30, 48, 58, 64, 70, 88, 116])),
        relu=draw(st.booleans()), read=draw(st.sampled_from(["all", "upper", "odd", "permuted"])),
        nparts=draw(st.integers(1, 3)), seed=draw(st.integers(0, 2**31 - 1)),
        # threads split pixel tiles, or (ungrouped layers) output-channel tiles
        split=cpu.SPLIT_PIXELS if groups > 1 else draw(st.sampled_from([cpu.SPLIT_PIXELS, cpu.SPLIT_COLUMNS])),
    )


def pointwise_setup(case, arena: Arena):
    """Source buffer, weights, offset table; returns what the reference needs."""
    rng = np.random.default_rng(case["seed"])
    h, w, g = case["h"], case["w"], case["groups"]
    cin, cout = g * case["cg"], g * case["og"]
    src_channels = cin if case["read"] in ("all", "permuted") else 2 * cin
    x = rng.standard_normal((src_channels, h, w)).astype(np.float32)
    koff = {
        "all": np.arange(cin),
        "upper": cin + np.arange(cin),  # a V2 unit's second half
        "odd": 2 * np.arange(cin) + 1,  # Megvii's odd channels
        "permuted": rng.permutation(cin),  # a V1 channel shuffle folded into the read
    }[case["read"]]
    weight = rng.standard_normal((cout, case["cg"], 1, 1)).astype(np.float32)
    bias = rng.standard_normal(cout).astype(np.float32)
    panels, table, group_floats = cpu.pack_pointwise(weight, bias, g)
    src_c = cpu.padded(src_channels)
    src = arena.add(cpu.to_padded_nhwc(x, src_c))
    wts = np.concatenate([panels, np.zeros(64, np.float32)])
    itab = np.concatenate([table.ravel(), koff]).astype(np.int64)
    packed = cpu.PackedGemm(weights_at=0, group_floats=group_floats, tiles_at=0, ntiles=len(table), groups=g,
                            group_in=case["cg"], group_out=case["og"])
    # the Gemm record but for its output buffer and epilogue
    gemm = dict(packed=packed, src=cpu.Buffer(src, h, w, src_c), channel_offsets_at=table.size, relu=case["relu"])
    conv = ref.pointwise_conv2d(x[koff][None], weight, bias, groups=g)[0]  # (cout, h, w), no ReLU yet
    return x, conv, wts, itab, gemm


def reach(case, first: int = 0) -> int:
    """One past the last channel whole tiles write (the backend's rule for direct stores)."""
    return first + (case["groups"] - 1) * case["og"] + sum(cpu.tile_widths(case["og"]))


def relu_if(flag: bool, y: np.ndarray) -> np.ndarray:
    return np.maximum(y, 0) if flag else y


@SETTINGS
@given(case=pointwise_cases(), out_ch=st.sampled_from([0, 1, 3]), out_step=st.sampled_from([1, 2]),
       direct=st.booleans())
def test_pointwise_store(case, out_ch, out_step, direct):
    arena = Arena()
    _, conv, wts, itab, gemm = pointwise_setup(case, arena)
    cout = conv.shape[0]
    # direct stores write whole tiles from registers: the output needs a channel stride with room for them
    direct = direct and out_step == 1
    dst_channels = out_ch + out_step * (cout - 1) + 1
    dst_c = max(cpu.padded(dst_channels), reach(case, out_ch) if direct else 0)
    dst = arena.zeros((case["h"] + 2) * (case["w"] + 2) * dst_c)
    ws = arena.array()
    run(cpu.Gemm(**gemm, dst=cpu.Buffer(dst, case["h"], case["w"], dst_c), out_first=out_ch, out_step=out_step,
                 direct=direct), ws, wts, itab, nparts=case["nparts"], split=case["split"])
    ours = buffer(ws, dst, case["h"], case["w"], dst_c, dst_channels)[out_ch::out_step]
    close(ours, relu_if(case["relu"], conv))


@SETTINGS
@given(case=pointwise_cases(), direct=st.booleans())
def test_pointwise_residual(case, direct):
    """V1 stride 1: relu(x + pw2(...)), with pw2's output added to the unit input in the epilogue."""
    arena = Arena()
    _, conv, wts, itab, gemm = pointwise_setup(case, arena)
    cout, h, w = conv.shape
    residual = np.random.default_rng(case["seed"] + 1).standard_normal(conv.shape).astype(np.float32)
    c = max(cpu.padded(cout), reach(case) if direct else 0)
    aux = arena.add(cpu.to_padded_nhwc(residual, c))
    dst = arena.zeros((h + 2) * (w + 2) * c)
    ws = arena.array()
    run(cpu.Gemm(**gemm, dst=cpu.Buffer(dst, h, w, c), epilogue=cpu.EPI_RESIDUAL, aux=cpu.Buffer(aux, h, w, c),
                 direct=direct), ws, wts, itab, nparts=case["nparts"], split=case["split"])
    expected = ref.bias_relu((conv + residual)[None], None, relu=case["relu"])[0]
    close(buffer(ws, dst, h, w, c, cout), expected)


@SETTINGS
@given(case=pointwise_cases(), split=st.sampled_from(["halves", "interleaved"]), shuffle=st.booleans(),
       direct=st.booleans())
def test_pointwise_concat_shuffle(case, split, shuffle, direct):
    """A V2 stride-1 unit's end: out = [shuffle(concat(passthrough, relu(pw2)), 2)], where the
    passthrough half of the unit input ``x2`` is copied in the same pass (its split folded in)."""
    arena = Arena()
    _, conv, wts, itab, gemm = pointwise_setup(case, arena)
    cout, h, w = conv.shape
    unit_in = np.random.default_rng(case["seed"] + 2).standard_normal((2 * cout, h, w)).astype(np.float32)
    passthrough, _ = ref.split_channels(unit_in[None], split)
    expected = ref.concat_channels(passthrough, relu_if(case["relu"], conv)[None])
    aux_c = cpu.padded(2 * cout)
    aux = arena.add(cpu.to_padded_nhwc(unit_in, aux_c))
    pass_step = 1 if split == "halves" else 2
    epi = dict(aux=cpu.Buffer(aux, h, w, aux_c), pass_from=0, pass_step=pass_step)
    if shuffle:
        expected = ref.channel_shuffle(expected, 2, "torchvision")
        direct = direct and case["groups"] == 1 and pass_step == 1
        dst_c = max(2 * reach(case), cpu.padded(2 * cout)) if direct else cpu.padded(2 * cout)  # room for whole tiles
        epi.update(epilogue=cpu.EPI_INTERLEAVE, direct=direct)
    else:
        dst_c = cpu.padded(2 * cout)
        epi.update(epilogue=cpu.EPI_PASSTHROUGH, out_first=cout)
    dst = arena.zeros((h + 2) * (w + 2) * dst_c)
    ws = arena.array()
    run(cpu.Gemm(**gemm, dst=cpu.Buffer(dst, h, w, dst_c), **epi), ws, wts, itab, nparts=case["nparts"],
        split=case["split"])
    close(buffer(ws, dst, h, w, dst_c, 2 * cout), expected[0])


@SETTINGS
@given(case=pointwise_cases())
def test_pointwise_global_pool(case):
    """The V2 head: global_avg_pool(relu(conv)) summed in the epilogue, the conv output never stored."""
    arena = Arena()
    _, conv, wts, itab, gemm = pointwise_setup(case, arena)
    ws = arena.array()
    pooled = np.full(cpu.padded(conv.shape[0]), 7.0, np.float32)  # stale values must be overwritten
    dst = cpu.Buffer(0, case["h"], case["w"], 0)  # (only its height and width count: nothing is stored)
    run(cpu.Gemm(**gemm, dst=dst, epilogue=cpu.EPI_POOL), ws, wts, itab, pooled=pooled, nparts=case["nparts"],
        split=case["split"])
    expected = ref.global_avg_pool(relu_if(case["relu"], conv)[None])[0]
    close(pooled[: conv.shape[0]], expected)


# --------------------------------------------------------------------------------------------------
# the stem: phase-split input, then conv 3x3 / 2 + ReLU + max-pool 3x3 / 2 in one pass


@SETTINGS
@given(cin=st.integers(1, 4), cout=st.sampled_from([1, 8, 12, 24, 29, 48]), h=st.integers(1, 40),
       w=st.integers(1, 75), nparts=st.integers(1, 3), seed=st.integers(0, 2**31 - 1))
def test_stem_pool(cin, cout, h, w, nparts, seed):
    rng = np.random.default_rng(seed)
    image = rng.standard_normal((cin, h, w)).astype(np.float32)
    weight = rng.standard_normal((cout, cin, 3, 3)).astype(np.float32)
    bias = rng.standard_normal(cout).astype(np.float32)
    expected = ref.max_pool2d(ref.conv2d(image[None], weight, bias, stride=2, padding=1, relu=True), 3, 2, 1)[0]
    _, _, hp, wp, _, q = cpu.stem_geometry(h, w)
    assert expected.shape[1:] == (hp, wp)
    arena = Arena()
    # the phase rows start out as garbage (a reused workspace region): phase_input must write them all
    rows = arena.add(np.full(cin * (h + 2) * 4 * q, 7.0, np.float32))
    c = cpu.padded(cout)
    dst = arena.zeros((hp + 2) * (wp + 2) * c)
    ws = arena.array()
    run(cpu.PhaseInput(rows_at=rows, phase_row=q), ws, image=image, nparts=nparts)
    run(cpu.StemPool(rows_at=rows, phase_row=q, image_height=h, image_width=w, image_channels=cin,
                     dst=cpu.Buffer(dst, hp, wp, c), weights_at=0, out_channels=cout),
        ws, cpu.pack_stem(weight, bias), nparts=nparts)
    close(buffer(ws, dst, hp, wp, c, cout), expected)


# --------------------------------------------------------------------------------------------------
# per-channel ops


@st.composite
def per_channel_cases(draw):
    c = draw(st.integers(1, 40))
    return dict(c=c, h=draw(st.integers(1, 11)), w=draw(st.integers(1, 11)), stride=draw(st.integers(1, 3)),
                src_extra=draw(st.sampled_from([0, 0, 16])), nparts=draw(st.integers(1, 3)),
                seed=draw(st.integers(0, 2**31 - 1)))


def per_channel_setup(case, arena: Arena, x: np.ndarray, dst_channels: int):
    h, w, s = case["h"], case["w"], case["stride"]
    ho, wo = (h - 1) // s + 1, (w - 1) // s + 1
    src_c = cpu.padded(case["c"]) + case["src_extra"]  # a wider buffer, like an interleaved V2 output
    src = arena.add(cpu.to_padded_nhwc(x, src_c))
    dst_c = cpu.padded(dst_channels)
    dst = arena.zeros((ho + 2) * (wo + 2) * dst_c)
    # what the records of the three ops share
    fields = dict(src=cpu.Buffer(src, h, w, src_c), channels=cpu.padded(case["c"]))
    return fields, cpu.Buffer(dst, ho, wo, dst_c)


@SETTINGS
@given(case=per_channel_cases(), relu=st.booleans())
def test_depthwise(case, relu):
    rng = np.random.default_rng(case["seed"])
    c = case["c"]
    x = rng.standard_normal((c, case["h"], case["w"])).astype(np.float32)
    weight = rng.standard_normal((c, 1, 3, 3)).astype(np.float32)
    bias = rng.standard_normal(c).astype(np.float32)
    arena = Arena()
    fields, dst = per_channel_setup(case, arena, x, c)
    ws = arena.array()
    run(cpu.Depthwise(**fields, dst=dst, stride=case["stride"], relu=relu, weights_at=0), ws,
        cpu.pack_depthwise(weight, bias), nparts=case["nparts"])
    expected = ref.depthwise_conv2d(x[None], weight, bias, stride=case["stride"], padding=1, relu=relu)[0]
    close(buffer(ws, dst.offset, dst.height, dst.width, dst.channel_stride, c), expected)


@SETTINGS
@given(case=per_channel_cases(), extra=st.integers(0, 40))
def test_avg_pool_into_concat(case, extra):
    """V1's stride-2 shortcut: avg_pool(x) written to the first channels of a wider output."""
    x = np.random.default_rng(case["seed"]).standard_normal((case["c"], case["h"], case["w"])).astype(np.float32)
    arena = Arena()
    fields, dst = per_channel_setup(case, arena, x, case["c"] + extra)
    ws = arena.array()
    run(cpu.AvgPool(**fields, dst=dst, stride=case["stride"]), ws, nparts=case["nparts"])
    expected = ref.avg_pool2d(x[None], 3, case["stride"], 1, count_include_pad=True)[0]
    close(buffer(ws, dst.offset, dst.height, dst.width, dst.channel_stride, case["c"]), expected)


@SETTINGS
@given(case=per_channel_cases())
def test_global_pool(case):
    x = np.random.default_rng(case["seed"]).standard_normal((case["c"], case["h"], case["w"])).astype(np.float32)
    arena = Arena()
    fields, _ = per_channel_setup(case, arena, x, case["c"])
    ws = arena.array()
    pooled = np.full(cpu.padded(case["c"]), 7.0, np.float32)
    run(cpu.GlobalPool(**fields), ws, pooled=pooled, nparts=case["nparts"])
    close(pooled[: case["c"]], ref.global_avg_pool(x[None])[0])


# --------------------------------------------------------------------------------------------------
# the classifier


@SETTINGS
@given(n=st.integers(1, 9), features=st.integers(1, 80), classes=st.sampled_from([1, 10, 17, 64, 100, 130]),
       nparts=st.integers(1, 3), seed=st.integers(0, 2**31 - 1))
def test_classifier(n, features, classes, nparts, seed):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, features)).astype(np.float32)
    weight = rng.standard_normal((classes, features)).astype(np.float32)
    bias = rng.standard_normal(classes).astype(np.float32)
    panels, table, group_floats = cpu.pack_gemm(weight.T[None], bias)
    itab = np.concatenate([table.ravel(), np.arange(features)]).astype(np.int64)
    packed = cpu.PackedGemm(weights_at=0, group_floats=group_floats, tiles_at=0, ntiles=len(table), groups=1,
                            group_in=features, group_out=classes)
    fc = cpu.pack_steps([cpu.Classifier(packed, channel_offsets_at=table.size)])
    padded = np.zeros((n, cpu.padded(features)), np.float32)
    padded[:, :features] = x
    logits = np.zeros((n, classes), np.float32)
    for part in range(nparts):
        cpu.classifier_part(cpu.kernel_table(), padded, panels, itab, fc[0], logits, np.int64(part), np.int64(nparts))
    close(logits, ref.linear(x, weight, bias))


# --------------------------------------------------------------------------------------------------
# layout helpers


def test_layout_round_trip_and_tiles():
    x = np.arange(5 * 3 * 4, dtype=np.float32).reshape(5, 3, 4)
    block = cpu.to_padded_nhwc(x, 16)
    assert block.shape == (5 * 6 * 16,)
    np.testing.assert_array_equal(cpu.from_padded_nhwc(block, 3, 4, 16, 5), x)
    assert block.reshape(5, 6, 16)[0].sum() == 0 and block.reshape(5, 6, 16)[:, 0].sum() == 0  # zero border
    for n in range(1, 300):
        widths = cpu.tile_widths(n)
        assert n <= sum(widths) <= cpu.padded(n) and all(w in cpu.TILE_WIDTHS for w in widths)


# --------------------------------------------------------------------------------------------------
# calls by address


def test_every_kernel_has_an_address_and_wrong_argument_types_do_not_compile():
    """The kernels are called through raw addresses (``fns``): a call with argument types other
    than the kernel was compiled for must fail to compile, never run with the wrong layout."""
    import numba
    from numba.core.errors import TypingError

    fns = cpu.kernel_table()
    assert (fns[list(cpu.KERNEL_SLOTS)] != 0).all() and fns is cpu.kernel_table()

    @numba.njit
    def call_with_a_2d_workspace(fns, ws, st):
        cpu._call_step(fns[0], fns, ws, ws[0], fns, st, ws.reshape((1, 1, -1)), ws[0], 0, 1)

    ws = np.zeros((2, 16), np.float32)
    with pytest.raises(TypingError):
        call_with_a_2d_workspace(fns, ws, cpu.pack_steps([cpu.GlobalPool(cpu.Buffer(0, 1, 1, 16), 16)])[0])


# --------------------------------------------------------------------------------------------------
# the step table, and what importing the package does


def test_pack_steps_writes_each_record_into_its_fields_and_nothing_else():
    src, dst = cpu.Buffer(16, 5, 6, 32), cpu.Buffer(2000, 5, 6, 48)
    packed = cpu.PackedGemm(weights_at=64, group_floats=96, tiles_at=8, ntiles=2, groups=3, group_in=4, group_out=20)
    records = [
        cpu.PhaseInput(rows_at=128, phase_row=48),
        cpu.StemPool(rows_at=128, phase_row=48, image_height=9, image_width=10, image_channels=3, dst=dst,
                     weights_at=32, out_channels=24),
        cpu.Gemm(packed, src, dst, channel_offsets_at=40, relu=True, epilogue=cpu.EPI_INTERLEAVE,
                 aux=cpu.Buffer(4000, 5, 6, 64), pass_from=1, pass_step=2, direct=True),
        cpu.Depthwise(src, dst, channels=32, stride=2, relu=False, weights_at=256),
        cpu.AvgPool(src, dst, channels=32, stride=2, out_first=3),
        cpu.GlobalPool(src, channels=32),
        cpu.Classifier(packed, channel_offsets_at=80),
    ]
    table = cpu.pack_steps(records, [cpu.SPLIT_PIXELS] * 6 + [cpu.SPLIT_NONE])
    assert table.dtype == cpu.STEP_DTYPE and len(table) == len(records)
    expected = [
        dict(kind=cpu.PHASE_INPUT, split=1, dst=128, phase_row=48),
        dict(kind=cpu.STEM_POOL, split=1, src=128, src_h=9, src_w=10, channels=3, phase_row=48, dst=2000, dst_h=5,
             dst_w=6, dst_c=48, weights=32, out_channels=24),
        dict(kind=cpu.GEMM, split=1, src=16, src_h=5, src_w=6, src_c=32, dst=2000, dst_h=5, dst_w=6, dst_c=48,
             relu=1, weights=64, group_floats=96, tiles=8, ntiles=2, groups=3, k=4, group_out=20, koff=40,
             mode=cpu.EPI_INTERLEAVE, out_step=1, aux=4000, aux_c=64, pass_from=1, pass_step=2, direct=1),
        dict(kind=cpu.DEPTHWISE, split=1, src=16, src_h=5, src_w=6, src_c=32, dst=2000, dst_h=5, dst_w=6, dst_c=48,
             channels=32, stride=2, weights=256),
        dict(kind=cpu.AVG_POOL, split=1, src=16, src_h=5, src_w=6, src_c=32, dst=2000, dst_h=5, dst_w=6, dst_c=48,
             channels=32, stride=2, out_first=3),
        dict(kind=cpu.GLOBAL_POOL, split=1, src=16, src_h=5, src_w=6, src_c=32, channels=32),
        dict(kind=cpu.CLASSIFIER, weights=64, group_floats=96, tiles=8, ntiles=2, groups=3, k=4, group_out=20,
             koff=80),
    ]
    for row, fields in zip(table, expected, strict=True):
        assert {name: int(row[name]) for name in cpu.STEP_FIELDS} == {**dict.fromkeys(cpu.STEP_FIELDS, 0), **fields}
    with pytest.raises(ValueError, match="one size"):  # a 1x1 conv, stride 1: src and dst alike
        cpu.pack_steps([cpu.Gemm(packed, src, cpu.Buffer(0, 3, 3, 16), channel_offsets_at=0, relu=False)])
    with pytest.raises(TypeError):
        cpu.pack_steps([dict(kind=cpu.GEMM)])


def test_importing_the_kernels_changes_no_numba_setting():
    """The SLP vectoriser is switched on only while the kernels compile (driver.compile_settings),
    not for the whole process on import; and a user's own NUMBA_SLP_VECTORIZE is left alone."""
    code = (
        "import os, numba\n"
        "env, slp = dict(os.environ), numba.config.SLP_VECTORIZE\n"
        "from kernels import cpu\n"
        "assert dict(os.environ) == env and numba.config.SLP_VECTORIZE == slp, (slp, numba.config.SLP_VECTORIZE)\n"
        "with cpu.compile_settings():\n"
        "    assert os.environ['NUMBA_SLP_VECTORIZE'] == os.environ.get('EXPECT', '1')\n"
        "    numba.core.config.reload_config()  # (as Numba does before each compilation)\n"
        "    assert numba.config.SLP_VECTORIZE == int(os.environ.get('EXPECT', '1'))\n"
        "assert dict(os.environ) == env and numba.config.SLP_VECTORIZE == slp\n"
        "print('ok')\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "NUMBA_SLP_VECTORIZE"}
    for extra in ({}, {"NUMBA_SLP_VECTORIZE": "0", "EXPECT": "0"}):
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO,
                             env={**env, **extra}, timeout=120)
        assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr
