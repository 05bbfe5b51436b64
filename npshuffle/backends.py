"""Backends: how a :class:`~npshuffle.plan.Plan` is executed.

A backend turns (plan, folded weights) into a *runner*: a callable from an NCHW float32 batch
``(N, 3, H, W)`` to logits ``(N, num_classes)``. ``prepare`` is where a backend does its one-time
work (packing weights into its own layout, compiling, allocating workspaces), so a runner can be
called many times cheaply.

``NumpyBackend`` is the readable reference: its ``prepare_reference`` walks the plan and calls
``kernels.reference`` op by op, exactly as the plan's docstrings describe the network, and its
``prepare`` (what runs) walks it the same way with the single-image forms of those ops, on weights
laid out once (a batch-1 forward in ~5-10 ms: ``benchmarks/numpy_batch1.py``). The other backends
load by name from :data:`BACKENDS`: ``numba`` and ``cuda`` (imported only when asked for) and
``auto`` (the default: NumPy or Numba per job, ``npshuffle/auto.py``).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from kernels import reference as ref

from .plan import ConvLayer, Plan, V1Unit, V2Unit

Runner = Callable[[np.ndarray], np.ndarray]


class BackendError(RuntimeError):
    """A backend that cannot be used here (not installed, no device, unknown name)."""


class NumpyBackend:
    """Plain NumPy (``kernels.reference``), one image at a time; no compiler, nothing to warm up.

    ``prepare`` returns the fast runner: it walks the plan like :meth:`prepare_reference` but with
    ``kernels.reference``'s single-image forms, which write into arrays laid out once here.
    :meth:`prepare_reference` is the plain op-by-op walk, the definition the fast one is tested
    against (tests/test_numpy_backend.py).

    Activations are one image's ``(C, H, W)`` float32 arrays, C-contiguous, so an image's pixels
    ``P = H*W`` form the rows of a ``(C, P)`` matrix: a 1x1 conv is ``weight @ x`` (per group:
    ``(G, O/G, C/G) @ (G, C/G, P)``), the depthwise conv is 9 shifted multiply-adds, and channel
    split, concat and the V2 shuffle are views (a channel slice, or every other channel), so the
    1x1 conv before a concat writes straight into its slot of the unit's output.

    Every call allocates its own arrays (no buffer is shared between calls, so a runner may be
    called from several threads at once), and runs a batch image by image (see ``run``).
    """

    name = "numpy"

    def prepare(self, plan: Plan, weights: dict[str, np.ndarray]) -> Runner:
        def out_size(n: int, layer: ConvLayer) -> int:  # a conv's output height or width
            return (n + 2 * layer.padding - layer.kernel) // layer.stride + 1

        def parameters(layer: ConvLayer) -> tuple[np.ndarray, np.ndarray]:
            w, b = weights[f"{layer.name}.weight"], weights[f"{layer.name}.bias"]
            return np.asarray(w, np.float32), np.asarray(b, np.float32)

        def pointwise(layer: ConvLayer):
            """``apply(x, out, relu)``: the 1x1 conv ``layer`` from x (C, P) into out (O, P); both may
            be row-strided views. Weight reshaped once to (G, O/G, C/G), bias to (G, O/G, 1)."""
            if (layer.kernel, layer.stride, layer.padding) != (1, 1, 0):
                raise ValueError(f"{layer.name}: a unit's 1x1 conv must have kernel 1, stride 1, padding 0")
            w, b = parameters(layer)
            g = layer.groups
            w = np.ascontiguousarray(w.reshape(g, layer.out_channels // g, layer.in_channels // g))
            b = b.reshape(g, layer.out_channels // g, 1)

            def apply(x: np.ndarray, out: np.ndarray, relu: bool) -> None:
                # (C, P) -> (G, C/G, P): a view, as a row-strided matrix splits into row blocks
                ref.pointwise_conv_image(x.reshape(g, -1, x.shape[-1]), w, b, relu, out.reshape(g, -1, out.shape[-1]))

            return apply

        def depthwise(layer: ConvLayer):
            """``apply(x) -> out``: the depthwise conv ``layer``, x (C, H, W) -> new (C, Ho, Wo).
            Weight reshaped once, (C, 1, K, K) -> (C, 1, K*K)."""
            if layer.groups != layer.in_channels or layer.in_channels != layer.out_channels:
                raise ValueError(f"{layer.name}: a unit's 3x3 conv must be depthwise")
            w, b = parameters(layer)
            k, s, p = layer.kernel, layer.stride, layer.padding
            w, b = w.reshape(layer.out_channels, 1, k * k), b[:, None]

            def apply(x: np.ndarray) -> np.ndarray:
                c, h, wd = x.shape
                ho, wo = out_size(h, layer), out_size(wd, layer)
                out = np.empty((c, ho * wo), np.float32)
                return ref.depthwise_conv_image(x, w, b, k, s, p, layer.relu, out).reshape(c, ho, wo)

            return apply

        def stem_conv(layer: ConvLayer):
            """``apply(x) -> out``: the stem, a dense conv, x (3, H, W) -> new (O, Ho, Wo) (im2col +
            one matrix product; weight flattened once to (O, C*K*K))."""
            w, b = parameters(layer)
            k, s, p = layer.kernel, layer.stride, layer.padding
            if layer.groups != 1:   # no ShuffleNet has one; the batched definition handles it

                def apply_grouped(x: np.ndarray) -> np.ndarray:
                    return ref.conv2d(x[None], w, b, stride=s, padding=p, groups=layer.groups, relu=layer.relu)[0]

                return apply_grouped
            w = np.ascontiguousarray(w.reshape(layer.out_channels, -1))
            b = b[:, None]

            def apply(x: np.ndarray) -> np.ndarray:
                _, h, wd = x.shape
                ho, wo = out_size(h, layer), out_size(wd, layer)
                out = np.empty((layer.out_channels, ho, wo), np.float32)
                ref.conv_image(x, w, b, k, s, p, layer.relu, out.reshape(layer.out_channels, ho * wo))
                return out

            return apply

        def pooled_size(n: int) -> int:  # 3x3, stride 2, padding 1 (max-pool after the stem, V1 shortcut)
            return (n - 1) // 2 + 1

        def v1_unit(u: V1Unit):
            """``apply(x) -> out`` for a V1 unit, x (C, H, W) -> new (C', H', W')."""
            pw1, dw, pw2 = pointwise(u.pw1), depthwise(u.dw), pointwise(u.pw2)
            mid = u.pw1.out_channels
            # The shuffle is a gather of whole channel planes (one small copy, ~1/17 of the
            # depthwise conv's passes over the same data); the permutation is computed once.
            perm = ref.shuffle_permutation(mid, u.groups, u.shuffle) if u.groups > 1 else None

            def apply(x: np.ndarray) -> np.ndarray:
                c, h, w = x.shape
                y = np.empty((mid, h * w), np.float32)
                pw1(x.reshape(c, h * w), y, True)
                if perm is not None:
                    y = np.take(y, perm, axis=0)
                z = dw(y.reshape(mid, h, w))
                _, ho, wo = z.shape
                z = z.reshape(mid, ho * wo)
                out = np.empty((u.out_channels, ho * wo), np.float32)
                if u.stride == 1:   # out = relu(x + pw2(z))
                    pw2(z, out, False)
                    np.add(out, x.reshape(c, h * w), out=out)
                    np.maximum(out, 0.0, out=out)
                else:               # out = concat(avg_pool(x), relu(pw2(z))), each written into its slot
                    ref.avg_pool_image(x, 3, 2, 1, out[:c])
                    pw2(z, out[c:], True)
                return out.reshape(-1, ho, wo)

            return apply

        def v2_unit(u: V2Unit):
            """``apply(x) -> out`` for a V2 unit, x (C, H, W) -> new (C', H', W')."""
            pw1, dw, pw2 = pointwise(u.pw1), depthwise(u.dw), pointwise(u.pw2)
            if u.stride == 2:
                proj_dw, proj_pw = depthwise(u.proj_dw), pointwise(u.proj_pw)
            first = u.proj_pw.out_channels if u.stride == 2 else u.in_channels // 2   # passthrough / proj

            def main_branch(x: np.ndarray, out: np.ndarray) -> None:
                """pw1 -> dw -> pw2 of x (C, H, W) into out (C'', Ho*Wo)."""
                c, h, w = x.shape
                y = np.empty((u.pw1.out_channels, h * w), np.float32)
                pw1(x.reshape(c, h * w), y, u.pw1.relu)
                z = dw(y.reshape(-1, h, w))
                pw2(z.reshape(z.shape[0], -1), out, u.pw2.relu)

            def apply(x: np.ndarray) -> np.ndarray:
                c, h, w = x.shape
                ho, wo = (h, w) if u.stride == 1 else (pooled_size(h), pooled_size(w))
                out = np.empty((u.out_channels, ho * wo), np.float32)
                # concat(a, b) then, in the torchvision dialect, shuffle(2): channel i of a lands on
                # channel 2i and channel i of b on 2i + 1, i.e. a and b are the even and odd rows.
                if u.shuffle_after:
                    pairs = out.reshape(u.out_channels // 2, 2, ho * wo)
                    dest_a, dest_b = pairs[:, 0], pairs[:, 1]
                else:
                    dest_a, dest_b = out[:first], out[first:]
                if u.stride == 1:
                    half = c // 2
                    if u.split == "halves":
                        a, b = x[:half], x[half:]
                    else:   # "interleaved": even / odd channels
                        a, b = x.reshape(half, 2, h, w)[:, 0], x.reshape(half, 2, h, w)[:, 1]
                    np.copyto(dest_a, a.reshape(half, h * w))
                else:
                    p = proj_dw(x)
                    proj_pw(p.reshape(p.shape[0], -1), dest_a, u.proj_pw.relu)
                    b = x
                main_branch(b, dest_b)
                return out.reshape(-1, ho, wo)

            return apply

        stem = stem_conv(plan.stem)
        units = [v1_unit(u) if isinstance(u, V1Unit) else v2_unit(u) for u in plan.units]
        head = pointwise(plan.head) if plan.head is not None else None
        c = plan.classifier
        fc_w = np.ascontiguousarray(weights[f"{c.name}.weight"], np.float32)
        fc_b = np.asarray(weights[f"{c.name}.bias"], np.float32)

        def run_one(image: np.ndarray) -> np.ndarray:
            """One image (3, H, W) -> its logits (num_classes,)."""
            x = stem(image)
            co, h, w = x.shape
            h, w = pooled_size(h), pooled_size(w)
            x = ref.max_pool_image(x, 3, 2, 1, np.empty((co, h * w), np.float32)).reshape(co, h, w)
            for unit in units:
                x = unit(x)
            co, h, w = x.shape
            x = x.reshape(co, h * w)
            if head is not None:
                y = np.empty((plan.head.out_channels, h * w), np.float32)
                head(x, y, plan.head.relu)
                x = y
            features = x.mean(axis=1, dtype=np.float32)
            return fc_w @ features + fc_b

        def run(x: np.ndarray) -> np.ndarray:
            # One image at a time, so that an image's logits never depend on its neighbours: BLAS
            # picks its kernel (GEMV for one row, GEMM tiles and edge cases for more) by the
            # matrix sizes, and with the batch inside the matrix an image's position in it would
            # change the rounding (by ~1e-6, differently on each CPU).
            x = np.asarray(x, np.float32)
            return np.stack([run_one(image) for image in x]) if len(x) else np.zeros((0, c.num_classes), np.float32)

        return run

    def prepare_reference(self, plan: Plan, weights: dict[str, np.ndarray]) -> Runner:
        """The plain walk: the plan op by op with ``kernels.reference``'s batched functions, exactly
        as the plan's docstrings describe the network. ~4x slower than :meth:`prepare`; the fast
        runner is tested against it."""

        def conv(layer: ConvLayer, x: np.ndarray) -> np.ndarray:
            w, b = weights[f"{layer.name}.weight"], weights[f"{layer.name}.bias"]
            return ref.conv2d(x, w, b, stride=layer.stride, padding=layer.padding, groups=layer.groups, relu=layer.relu)

        def v1_unit(u: V1Unit, x: np.ndarray) -> np.ndarray:
            y = conv(u.pw1, x)
            if u.groups > 1:
                y = ref.channel_shuffle(y, u.groups, u.shuffle)
            y = conv(u.pw2, conv(u.dw, y))
            if u.stride == 1:
                return ref.bias_relu(x + y, None, relu=True)
            shortcut = ref.avg_pool2d(x, 3, 2, 1, count_include_pad=True)
            return ref.concat_channels(shortcut, ref.bias_relu(y, None, relu=True))

        def v2_unit(u: V2Unit, x: np.ndarray) -> np.ndarray:
            if u.stride == 1:
                passthrough, x = ref.split_channels(x, u.split)
            else:
                passthrough = conv(u.proj_pw, conv(u.proj_dw, x))
            out = ref.concat_channels(passthrough, conv(u.pw2, conv(u.dw, conv(u.pw1, x))))
            return ref.channel_shuffle(out, 2, "torchvision") if u.shuffle_after else out

        def run_one(x: np.ndarray) -> np.ndarray:
            x = ref.max_pool2d(conv(plan.stem, x), 3, 2, 1)
            for unit in plan.units:
                x = v1_unit(unit, x) if isinstance(unit, V1Unit) else v2_unit(unit, x)
            if plan.head is not None:
                x = conv(plan.head, x)
            c = plan.classifier
            return ref.linear(ref.global_avg_pool(x), weights[f"{c.name}.weight"], weights[f"{c.name}.bias"])

        def run(x: np.ndarray) -> np.ndarray:
            # one image at a time, like the fast runner (see there)
            return np.concatenate([run_one(x[i: i + 1]) for i in range(x.shape[0])])

        return run


def _numba_backend():
    from .backend_numba import NumbaBackend  # imports numba: only when asked for

    return NumbaBackend()


def _cuda_backend():
    from .backend_cuda import CudaBackend  # imports numba.cuda: only when asked for

    return CudaBackend()


# name -> factory. Each factory raises BackendError with a clear message when its backend cannot
# run here (e.g. "cuda" without a GPU or without numba-cuda).
BACKENDS: dict[str, Callable[[], object]] = {
    "numpy": NumpyBackend,
    "numba": _numba_backend,
    "cuda": _cuda_backend,
}


def _auto_backend():
    from .auto import AutoBackend  # NumPy for small jobs, Numba for large ones: see npshuffle/auto.py

    return AutoBackend()


BACKENDS["auto"] = _auto_backend

# what a Model runs on unless told otherwise
DEFAULT_BACKEND = "auto"


def get_backend(name: str | None = None):
    """An instance of the backend called ``name`` (see :data:`BACKENDS`); None = DEFAULT_BACKEND."""
    name = name or DEFAULT_BACKEND
    try:
        factory = BACKENDS[name]
    except KeyError:
        raise BackendError(f"unknown backend {name!r}: choose one of {', '.join(BACKENDS)}") from None
    return factory()
