"""A ready-to-run network: plan + folded weights + preprocessing recipe + class names, on a backend."""

from __future__ import annotations

import os

import numpy as np

from .backends import get_backend
from .model_file import MIN_INPUT_SIZE, ModelFile, load_model_file


class Model:
    """A loaded model. ``forward`` maps an NCHW float32 batch ``(N, 3, H, W)``, already
    preprocessed with :attr:`recipe`, to logits ``(N, num_classes)``.

    ``backend``: its name (``"auto"``, ``"numpy"``, ``"numba"``, ``"cuda"``; see
    ``npshuffle.backends``); ``threads`` and ``schedule``: how the Numba CPU kernels use the cores
    (``npshuffle.cpu_settings``; None: all of Numba's threads, the adaptive schedule). All three
    stay visible on the model as :attr:`settings`.
    """

    def __init__(self, model_file: ModelFile, backend: str | None = None, name: str | None = None, *,
                 threads: int | None = None, schedule: str | None = None):
        self.file = model_file
        self.name = name or model_file.metadata.get("variant", "model")
        self.backend = get_backend(backend, threads=threads, schedule=schedule)
        self.threads, self.schedule = threads, schedule
        self._run = self.backend.prepare(model_file.plan, model_file.weights)

    @classmethod
    def load(cls, path: str | os.PathLike, backend: str | None = None, *, threads: int | None = None,
             schedule: str | None = None) -> Model:
        """Load and validate a model file (raises ModelFileError with a clear message)."""
        return cls(load_model_file(path), backend=backend, name=os.path.basename(str(path)), threads=threads,
                   schedule=schedule)

    @property
    def settings(self) -> dict:
        """What this model runs on and how: ``{"backend": ..., "threads": ..., "schedule": ...}``."""
        return {"backend": self.backend.name, "threads": self.threads, "schedule": self.schedule}

    @property
    def class_names(self) -> list[str]:
        return self.file.class_names

    @property
    def recipe(self) -> dict:
        return self.file.recipe

    @property
    def metadata(self) -> dict:
        return self.file.metadata

    @property
    def status(self) -> str:
        """What the model runs on right now ("numpy", "numba", "numpy, compiling numba", ...)."""
        return getattr(self._run, "status", self.backend.name)

    def expect(self, images: int) -> None:
        """Tell the model how many images the coming job has (``backend="auto"`` uses it to choose)."""
        if hasattr(self._run, "expect"):
            self._run.expect(images)

    def expect_pixels(self, pixels: float) -> None:
        """Tell the model the coming job's photos are about ``pixels`` pixels each (``backend="auto"``
        weighs it: big photos make Numba pay sooner)."""
        if hasattr(self._run, "expect_pixels"):
            self._run.expect_pixels(pixels)

    def close(self) -> None:
        """Stop any background work (``backend="auto"``'s compile). The model stays usable."""
        if hasattr(self._run, "close"):
            self._run.close()

    @property
    def concurrent(self) -> bool:
        """Whether calls of :meth:`forward` from several Python threads run at the same time (the
        Numba backend, and ``auto`` once it runs Numba); otherwise they may, but take turns."""
        return bool(getattr(self._run, "concurrent", False))

    def forward(self, batch: np.ndarray, *, threads: int | None = None) -> np.ndarray:
        """Logits (N, num_classes) for ``batch`` (N, 3, H, W). ``threads``: the CPU threads of this
        call, where the backend runs the Numba kernels (None: the model's ``threads`` setting, else
        all of Numba's); other backends ignore it. Several single-threaded calls from as many Python
        threads use as many cores (see :attr:`concurrent`)."""
        batch = np.asarray(batch)
        if batch.ndim != 4 or batch.shape[1] != 3:
            raise ValueError(f"expected a batch of shape (N, 3, H, W), got {batch.shape}")
        if min(batch.shape[2:]) < MIN_INPUT_SIZE:
            raise ValueError(f"images must be at least {MIN_INPUT_SIZE}x{MIN_INPUT_SIZE} pixels, got {batch.shape[2:]}")
        batch = np.ascontiguousarray(batch, dtype=np.float32)
        takes_threads = hasattr(self._run, "concurrent")  # (the runners that may run Numba take a thread count)
        return self._run(batch, threads) if threads is not None and takes_threads else self._run(batch)

    __call__ = forward
