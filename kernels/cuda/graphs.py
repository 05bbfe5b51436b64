"""A kernel launch with everything bound (:class:`Launch`), and a list of them captured as one
CUDA graph (:class:`CudaGraph`)."""

from __future__ import annotations

import numpy as np
from numba import config as _numba_config
from numba import cuda

SIMULATOR = bool(getattr(_numba_config, "ENABLE_CUDASIM", 0))  # numba's CUDA simulator (no GPU)


def _restore_numpy_row_stack() -> None:
    """numba-cuda <= 0.30.4 registers an overload for ``np.row_stack``, an alias NumPy 2.5 removed;
    without it the first kernel compile fails with "module 'numpy' has no attribute 'row_stack'".
    Restoring the alias (it always meant np.vstack) lets that combination work. Called when the
    first launch is prepared (:class:`Launch`), not at import: importing this module changes nothing."""
    if not hasattr(np, "row_stack"):
        np.row_stack = np.vstack


class Launch:
    """A kernel with its grid, block and arguments bound: ``launch()`` enqueues it on its stream
    (the default stream unless :meth:`set_stream` changed it) and returns at once. A backend builds
    its network as a list of these, once. ``name`` is the kernel kind ("pointwise", ...);
    ``label`` a free-form description a backend may set (the layer, its shape) for profiles."""

    __slots__ = ("kernel", "grid", "block", "args", "name", "label", "stream", "configured")

    def __init__(self, kernel, grid, block, args: tuple, name: str = ""):
        _restore_numpy_row_stack()
        self.kernel, self.grid, self.block, self.args, self.name = kernel, grid, block, args, name
        self.label = name
        self.set_stream(0)

    def set_stream(self, stream) -> Launch:
        """Launch on ``stream`` (a numba stream, or 0 for the default one) from now on."""
        self.stream = stream
        configured = self.kernel[self.grid, self.block, stream]
        # numba's simulator configures the kernel object itself (and returns it), so a configured
        # kernel cannot be kept there: configure it at each call instead
        self.configured = None if configured is self.kernel else configured
        return self

    def __call__(self) -> None:
        if self.configured is None:
            self.kernel[self.grid, self.block, self.stream](*self.args)
        else:
            self.configured(*self.args)

    def __repr__(self) -> str:
        return f"Launch({self.label}, grid={self.grid}, block={self.block})"


class GraphUnavailable(RuntimeError):
    """Raised by :class:`CudaGraph` where a CUDA graph cannot be built (the simulator, no cuda.core,
    a driver that refuses the capture); the message says why. Callers fall back to launches."""


class CudaGraph:
    """A list of :class:`Launch` es captured once into a CUDA graph and replayed by ``launch()`` on
    ``stream`` (a numba stream) with a single driver call.

    Why: numba dispatches each kernel launch through Python (argument typing and marshalling, a
    launch-config object, then the driver), tens of microseconds per launch; a ShuffleNet is ~60
    launches, so at small batches the host, not the GPU, sets the pace. A graph is captured with
    the launches' own arguments (device pointers, shapes, scalars), so a replay computes exactly
    what the launches compute, on the same buffers; the launches (and so their arrays) are kept
    alive with the graph.

    Capture uses cuda.core (a dependency of numba-cuda >= 0.2x), the path numba-cuda documents and
    tests: a ``GraphBuilder`` passed as a kernel's stream (``kernel[grid, block, builder](...)``).
    The kernels must already be compiled (run the launches once first): capture records, it does
    not compile.
    """

    def __init__(self, launches, stream):
        if SIMULATOR:
            raise GraphUnavailable("numba's CUDA simulator has no graphs")
        try:
            from cuda.core import Device, Stream
        except ImportError as exc:
            raise GraphUnavailable(f"cuda.core is not importable ({exc})") from None
        try:
            device = Device(cuda.get_current_device().id)
            device.set_current()  # the primary context, which numba uses too
            builder = device.create_graph_builder()
            try:
                builder.begin_building(mode="relaxed")
            except TypeError:  # an older cuda.core without the mode argument
                builder.begin_building()
            try:
                for launch in launches:
                    launch.kernel[launch.grid, launch.block, builder](*launch.args)
            finally:
                builder.end_building()
            self.graph = builder.complete()
            handle = int(stream.handle)
            self.stream = Stream.from_handle(handle)
        except Exception as exc:
            raise GraphUnavailable(f"graph capture failed: {type(exc).__name__}: {exc}") from exc
        try:
            self.graph.upload(self.stream)  # optional: the first launch would upload it anyway
        except Exception:
            pass
        self.launches = list(launches)  # keeps every argument (device array) alive

    def launch(self) -> None:
        self.graph.launch(self.stream)

    def __len__(self) -> int:
        return len(self.launches)
