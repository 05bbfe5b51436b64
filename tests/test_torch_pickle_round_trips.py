"""weights_convert.torch_pickle reads what torch.save writes: every dtype, view, pickle protocol and format.

torch is used here only to *write* checkpoints (and, as a reference, to read them).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.torch_checkpoints import FORMATS, assert_same_tree, small_checkpoint, torch_save
from weights_convert.torch_pickle import load_torch_checkpoint

WEIGHTS_DIR = Path(__file__).resolve().parent.parent / ".." / "shared" / "weights"
MEGVII_FILES = ["ShuffleNetV1_g3_0.5x.pth.tar", "ShuffleNetV1_g8_0.5x.pth.tar"]


# --------------------------------------------------------------------------
# round trips
# --------------------------------------------------------------------------


def rich_checkpoint() -> dict[str, object]:
    """One of everything the loader promises to handle."""
    gen = torch.Generator().manual_seed(0)
    base = torch.randn(6, 5, generator=gen)
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3, groups=1), torch.nn.BatchNorm2d(8))
    tensors = {
        "f32": torch.randn(2, 3, generator=gen),
        "f64": torch.randn(4, generator=gen, dtype=torch.float64),
        "f16": torch.randn(3, 2, generator=gen).half(),
        "bf16": torch.randn(7, generator=gen).bfloat16(),
        "i64": torch.randint(-(2**40), 2**40, (5,), generator=gen),
        "i32": torch.randint(-1000, 1000, (2, 2), generator=gen, dtype=torch.int32),
        "i16": torch.randint(-1000, 1000, (3,), generator=gen, dtype=torch.int16),
        "i8": torch.randint(-128, 128, (3,), generator=gen, dtype=torch.int8),
        "u8": torch.randint(0, 256, (3,), generator=gen, dtype=torch.uint8),
        "bool": torch.randint(0, 2, (2, 3), generator=gen).bool(),
        "scalar_f32": torch.tensor(2.5),
        "scalar_i64": torch.tensor(7),
        "scalar_bf16": torch.tensor(-1.25, dtype=torch.bfloat16),
        "empty": torch.zeros(0, 3),
        "transposed": base.t(),
        "row_of_shared": base[2],  # shares base's storage, offset 10
        "column_of_shared": base[:, 1],  # same storage, stride 5
        "stepped": base[1::2, ::3],
        "expanded": torch.arange(3.0).expand(4, 3),  # stride 0
        "permuted": torch.randn(2, 3, 4, generator=gen).permute(2, 0, 1),
        "neg_view": torch._neg_view(torch.arange(4.0)),
        "parameter": torch.nn.Parameter(torch.randn(3, generator=gen)),
    }
    return {
        "state_dict": model.state_dict(),
        "tensors": tensors,
        "same_tensor_twice": [tensors["f32"], tensors["f32"]],
        "tuple": (1, 2.5, "three", None, True),
        "shape": torch.Size([2, 3]),
        "bytes": b"\x00\xffraw",
        "epoch": 3,
        "best_acc": 0.75,
        "arch": "shufflenet_v1",
    }


@pytest.mark.parametrize("fmt", FORMATS)
def test_round_trip_rich_checkpoint(tmp_path: Path, fmt: str) -> None:
    original = rich_checkpoint()
    loaded = load_torch_checkpoint(torch_save(original, tmp_path / "ckpt.pth", fmt))
    assert_same_tree(loaded, original)
    assert loaded["same_tensor_twice"][0] is loaded["same_tensor_twice"][1]


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("protocol", [1, 2, 3, 4, 5])
def test_round_trip_pickle_protocols(tmp_path: Path, fmt: str, protocol: int) -> None:
    original = small_checkpoint()
    path = torch_save(original, tmp_path / "ckpt.pt", fmt, pickle_protocol=protocol)
    assert_same_tree(load_torch_checkpoint(path), original)


def test_accepts_pathlike_and_str(tmp_path: Path) -> None:
    path = torch_save({"w": torch.ones(2)}, tmp_path / "w.pt", "zip")
    for spelling in (path, str(path)):
        np.testing.assert_array_equal(load_torch_checkpoint(spelling)["w"], np.ones(2, np.float32))


DTYPES = [
    torch.float32,
    torch.float64,
    torch.float16,
    torch.bfloat16,
    torch.int64,
    torch.int32,
    torch.int16,
    torch.int8,
    torch.uint8,
    torch.bool,
]
VIEWS = ["contiguous", "transposed", "offset", "stepped", "expanded"]


def make_tensor(dtype: torch.dtype, shape: tuple[int, ...], view: str, seed: int) -> torch.Tensor:
    """A tensor of ``shape`` whose memory layout is ``view`` (maybe non-contiguous)."""
    gen = torch.Generator().manual_seed(seed)

    def fresh(shape: tuple[int, ...]) -> torch.Tensor:
        if dtype.is_floating_point:
            return torch.randn(shape, generator=gen).to(dtype)
        if dtype == torch.bool:
            return torch.randint(0, 2, shape, generator=gen).bool()
        low = 0 if dtype == torch.uint8 else -100
        return torch.randint(low, 100, shape, generator=gen).to(dtype)

    if view == "transposed" and len(shape) >= 2:
        return fresh((shape[1], shape[0], *shape[2:])).transpose(0, 1)
    if view == "offset":
        return fresh((3 + int(np.prod(shape)),))[3:].view(shape)
    if view == "stepped" and len(shape) >= 1:
        return fresh((2 * shape[0] + 1, *shape[1:]))[1::2]
    if view == "expanded" and len(shape) >= 1:
        return fresh((1, *shape[1:])).expand(shape)
    return fresh(shape)


tensor_specs = st.tuples(
    st.sampled_from(DTYPES),
    st.lists(st.integers(0, 4), min_size=0, max_size=4).map(tuple),
    st.sampled_from(VIEWS),
    st.integers(0, 2**31),
)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(specs=st.lists(tensor_specs, min_size=1, max_size=5), fmt=st.sampled_from(FORMATS))
def test_round_trip_random_tensors(tmp_path: Path, specs: list, fmt: str) -> None:
    tensors = {f"t{i}": make_tensor(*spec) for i, spec in enumerate(specs)}
    first = next(iter(tensors.values()))
    original = {"state_dict": tensors, "alias": first, "epoch": 3}  # "alias" shares a storage
    loaded = load_torch_checkpoint(torch_save(original, tmp_path / "random.pth", fmt))
    assert_same_tree(loaded, original)


# --------------------------------------------------------------------------
# the real Megvii ShuffleNetV1 checkpoints (legacy format)
# --------------------------------------------------------------------------


@pytest.mark.parametrize("name", MEGVII_FILES)
def test_megvii_legacy_checkpoints_match_torch_load(name: str) -> None:
    path = WEIGHTS_DIR / name
    if not path.exists():
        pytest.skip(f"{path} not present")
    loaded = load_torch_checkpoint(path)
    reference = torch.load(path, map_location="cpu", weights_only=True)
    assert list(loaded) == ["state_dict"]
    state = loaded["state_dict"]
    assert len(state) == 295
    assert all(key.startswith("module.") for key in state)
    assert_same_tree(loaded, reference)
