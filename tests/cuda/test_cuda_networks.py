"""Whole networks on the CUDA backend (``npshuffle.backend_cuda``) against the NumPy backend, and
what a call does: the copies it makes, CUDA graphs, pinned / chunked / threaded staging, errors.

The networks are tiny (a few channels, a 20 to 24 pixel input: a simulated call is seconds), and
each kind of unit is in one: V2 in both dialects (halves + shuffle / interleaved), V1 g2 in both
(torchvision / megvii shuffle, one input not square). On a GPU the bundled V2 x0.5 (``flowers_v2``) runs too; the
real-size networks are ``benchmarks/gpu_check.py``'s parity run."""

from __future__ import annotations

import numpy as np
import pytest

import npshuffle
from kernels import cuda as kc
from npshuffle.backend_cuda import CudaBackend, CudaRunner
from npshuffle.backends import NumpyBackend, get_backend
from tests.cuda.helpers import (
    SIMULATOR,
    SMALLEST_V2,
    TINY_V1,
    TINY_V2,
    assert_close,
    counting_copies,
    random_network,
    rng,
)

NETWORKS = [
    pytest.param(TINY_V2, "torchvision", (2, 3, 20, 20), id="V2-torchvision"),
    pytest.param(TINY_V2, "megvii", (2, 3, 20, 20), id="V2-megvii"),
    pytest.param(TINY_V1, "torchvision", (2, 3, 20, 20), id="V1g2-torchvision"),
    pytest.param(TINY_V1, "megvii", (2, 3, 24, 20), id="V1g2-megvii-not-square"),
]


@pytest.mark.parametrize("spec, dialect, shape", NETWORKS)
def test_network_matches_the_numpy_backend_on_the_first_and_second_call(spec, dialect, shape):
    """The first call lays out the network and runs it launch by launch (then captures a CUDA
    graph where it can); the second runs the graph, or the launches again. Both = the NumPy
    backend. The second call copies the input in (in chunks of its pinned staging buffer: one,
    this small) and the logits out, and nothing else: no weight or buffer goes up again."""
    plan, weights = random_network(spec, dialect, seed=sum(shape))
    x = rng(1).standard_normal(shape, dtype=np.float32)
    runner = CudaBackend().prepare(plan, weights)
    first = runner(x)
    with counting_copies() as copies:
        second = runner(x)
    want = NumpyBackend().prepare(plan, weights)(x)
    assert_close(first, want, "first call")
    assert_close(second, want, "second call")

    ws = runner.workspaces[shape]
    assert len(ws.chunks) == 1
    assert copies == {"copy_to_device": 1, "copy_to_host": 1}, f"copies made by one call: {copies}"
    # a graph, or the reason there is none, never both
    assert (ws.graph is None) == bool(ws.graph_error), (ws.graph, ws.graph_error)
    if SIMULATOR:
        assert ws.graph is None and "simulator" in ws.graph_error


def test_chunked_threaded_pinned_staging_equals_a_pageable_copy():
    """A batch of 5 staged in 3 chunks of whole images (2, 2, 1) by 3 threads, from a float64
    array, gives the logits of a plain pageable copy of the float32 batch, call after call."""
    plan, weights = random_network(SMALLEST_V2, "torchvision", seed=7)
    x = rng(7).standard_normal((5, 3, 8, 8))  # float64: staging converts it
    image_bytes = 4 * 3 * 8 * 8
    chunked = CudaRunner(plan, weights, copy_chunk_bytes=2 * image_bytes, copy_threads=3)
    pageable = CudaRunner(plan, weights, pinned=False, graphs=False)
    try:
        got = chunked(x), chunked(x)
    finally:
        chunked.close()
    ws = chunked.workspaces[x.shape]
    assert [(first, end) for first, end, _ in ws.chunks] == [(0, 2), (2, 4), (4, 5)]
    assert ws.pinned_input is not None and ws.pinned_logits is not None
    with counting_copies() as copies:
        want = pageable(x.astype(np.float32))
    pws = pageable.workspaces[x.shape]
    assert pws.pinned_input is None and pws.chunks == []
    assert copies == {"copy_to_device": 1, "copy_to_host": 1}, f"a pageable call's copies: {copies}"
    assert pws.graph is None and pws.graph_error, "graphs=False still built a graph"
    for logits in got:
        assert_close(logits, want, "chunked staging vs pageable copy")


def test_npshuffle_cuda_graphs_0_turns_graphs_off(monkeypatch):
    plan, weights = random_network(SMALLEST_V2, "torchvision", seed=8)
    monkeypatch.setenv("NPSHUFFLE_CUDA_GRAPHS", "0")
    assert CudaRunner(plan, weights).graphs is False
    monkeypatch.setenv("NPSHUFFLE_CUDA_GRAPHS", "1")
    assert CudaRunner(plan, weights).graphs is True
    assert CudaRunner(plan, weights, graphs=False).graphs is False


def test_cuda_graph_of_launches_replays_them_or_says_why_not():
    """A CudaGraph replays its launches' work; on the simulator it cannot exist (GraphUnavailable)."""
    g = rng(9)
    x, w = g.standard_normal((2, 8, 9), dtype=np.float32), g.standard_normal((8, 8), dtype=np.float32)
    cuda = kc.cuda
    dx, dw, dbias = cuda.to_device(x), cuda.to_device(kc.pack_pointwise_weight(w)), cuda.to_device(np.zeros(8, "f4"))
    out = cuda.device_array((2, 8, 9), np.float32)
    stream = cuda.stream()
    launch = kc.pointwise_launch(dx, dw, dbias, out, relu=True).set_stream(stream)
    assert isinstance(launch, kc.Launch) and launch.name == "pointwise"
    if SIMULATOR:
        with pytest.raises(kc.GraphUnavailable, match="simulator"):
            kc.CudaGraph([launch], stream)
        return
    launch()
    stream.synchronize()
    expected = out.copy_to_host()
    out.copy_to_device(np.zeros((2, 8, 9), np.float32))
    try:
        graph = kc.CudaGraph([launch], stream)
    except kc.GraphUnavailable as exc:
        pytest.skip(f"no CUDA graphs on this machine: {exc}")
    graph.launch()
    stream.synchronize()
    np.testing.assert_array_equal(out.copy_to_host(), expected)
    assert len(graph) == 1


def test_a_batch_that_is_not_n_3_h_w_is_refused():
    plan, weights = random_network(SMALLEST_V2, "torchvision", seed=10)
    runner = CudaRunner(plan, weights)
    for bad in (np.zeros((1, 4, 16, 16), np.float32), np.zeros((3, 16, 16), np.float32)):
        with pytest.raises(ValueError, match=r"expected a batch of shape \(N, 3, H, W\)"):
            runner(bad)


def test_get_backend_cuda_and_load_model_on_cuda():
    """The registry's "cuda" and a bundled model loaded onto it (its weights uploaded). On a GPU
    it also classifies: the same logits as on the NumPy backend (too slow for the simulator)."""
    backend = get_backend("cuda")
    assert isinstance(backend, CudaBackend) and backend.name == "cuda"
    model = npshuffle.load_model("flowers_v2", backend="cuda")
    assert model.status == "cuda"
    if SIMULATOR:
        return
    x = rng(11).standard_normal((2, 3, 224, 224), dtype=np.float32)
    want = npshuffle.load_model("flowers_v2", backend="numpy").forward(x)
    assert_close(model.forward(x), want, "flowers_v2 on cuda vs numpy")
