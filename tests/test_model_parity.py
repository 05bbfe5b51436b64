"""Whole-model parity: random torch network -> torch.save -> converter -> npshuffle model.

Every example draws a random variant (V1 or V2, either dialect, small random widths, groups,
stage counts and num_classes), random weights *and* random BN statistics, a random batch of 1-4
images of random size, and saves the checkpoint the way people do (zip or legacy format, bare or
wrapped in {'state_dict': ...} / {'model': ...}, with or without DataParallel's 'module.' prefix).
"""

from __future__ import annotations

import numpy as np
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from npshuffle.model import Model
from npshuffle.training.torch_ref import build_torch_model, randomize_
from tests.strategies import v1_specs, v2_specs
from weights_convert import convert_file

RELATIVE_TOLERANCE = 1e-4


def wrap_and_save(state_dict, path, wrapping: str, legacy: bool):
    if wrapping == "module":
        state_dict = {f"module.{k}": v for k, v in state_dict.items()}
    obj = {"state_dict": state_dict, "epoch": 7} if wrapping == "state_dict" else state_dict
    if wrapping == "model":
        obj = {"model": state_dict, "optimizer_lr": 0.1}
    torch.save(obj, path, _use_new_zipfile_serialization=not legacy)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    spec=st.one_of(v1_specs(), v2_specs()),
    dialect=st.sampled_from(["torchvision", "megvii"]),
    batch=st.integers(1, 4),
    height=st.integers(32, 72),
    width=st.integers(32, 72),
    seed=st.integers(0, 2**31 - 1),
    wrapping=st.sampled_from(["bare", "state_dict", "model", "module"]),
    legacy=st.booleans(),
)
def test_converted_model_matches_torch(tmp_path, spec, dialect, batch, height, width, seed, wrapping, legacy):
    generator = torch.Generator().manual_seed(seed)
    net = randomize_(build_torch_model(spec, dialect), generator)
    checkpoint = tmp_path / f"net-{seed}.pth"
    wrap_and_save(net.state_dict(), checkpoint, wrapping, legacy)
    meta = convert_file(checkpoint, tmp_path / f"net-{seed}.npz")
    assert meta["dialect"] == dialect and meta["num_classes"] == spec.num_classes

    model = Model.load(tmp_path / f"net-{seed}.npz")
    x = torch.randn(batch, 3, height, width, generator=generator)
    with torch.no_grad():
        expected = net(x).numpy()
    ours = model.forward(x.numpy())

    assert ours.shape == expected.shape
    scale = np.abs(expected).max()
    np.testing.assert_allclose(ours, expected, rtol=0, atol=RELATIVE_TOLERANCE * scale)
    # identical top-1, except where torch's own top two are closer than the tolerance
    top2 = np.sort(expected, axis=1)[:, -2:] if spec.num_classes > 1 else None
    for i in range(batch):
        if top2 is None or top2[i, 1] - top2[i, 0] > 2 * RELATIVE_TOLERANCE * scale:
            assert ours[i].argmax() == expected[i].argmax()
