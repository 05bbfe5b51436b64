"""Classifying images: the ``predict`` API behind ``npshuffle.predict`` and ``npshuffle predict``.

Images stream through in batches (``batch_size`` at a time: memory stays bounded however many
inputs there are). A broken input never stops the others: in a list, it comes back as a
:class:`Prediction` whose ``error`` says what was wrong; a single image raises :class:`ImageError`.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field

import numpy as np

from kernels.reference import softmax

from .backends import DEFAULT_BACKEND
from .images import ImageError, describe, load_rgb
from .model import Model
from .preprocess import preprocess_image
from .zoo import resolve

DEFAULT_BATCH_SIZE = 16


@dataclass
class Prediction:
    """The classification of one image.

    ``top``: ``(label, probability)`` pairs, best first (``top_k`` of them); ``class_index``: the
    top-1 class; ``logits``: the raw scores for every class, shape ``(num_classes,)``;
    ``source``: the path (or a description of the array / PIL image); ``error``: why this input
    could not be classified (then ``top`` is empty and ``class_index`` is -1).
    """

    source: str
    top: list[tuple[str, float]] = field(default_factory=list)
    class_index: int = -1
    logits: np.ndarray | None = field(default=None, repr=False)
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.error is None

    @property
    def label(self) -> str | None:
        return self.top[0][0] if self.top else None

    @property
    def probability(self) -> float | None:
        return self.top[0][1] if self.top else None

    def to_dict(self) -> dict:
        out = {"source": self.source}
        if self.error is not None:
            out["error"] = self.error
        else:
            out["class_index"] = self.class_index
            out["top"] = [{"label": label, "probability": p} for label, p in self.top]
        return out


_LOADED: dict[tuple[str, str], Model] = {}


def load_model(name_or_path: str | os.PathLike | None = None, backend: str | None = None) -> Model:
    """A ready model: a bundled name (see ``npshuffle list``) or a ``.npz`` path; None = the default.

    Loaded models are cached per (file, backend), so repeated calls neither reload nor recompile.
    Raises ``ModelFileError`` (bad name, missing or malformed file) or ``BackendError``.
    """
    name, path = resolve(name_or_path)
    key = (os.path.realpath(path), backend or DEFAULT_BACKEND)
    if key not in _LOADED:
        model = Model.load(path, backend=backend)
        model.name = name
        _LOADED[key] = model
    return _LOADED[key]


def classify_batch(model: Model, images: list, top_k: int) -> list[Prediction]:
    """Classify already-decoded RGB PIL images (one forward pass). Sources are filled in by the caller."""
    batch = np.stack([preprocess_image(image, model.recipe) for image in images])
    logits = model.forward(batch)
    probabilities = softmax(logits.astype(np.float64), axis=1)
    results = []
    k = min(top_k, logits.shape[1])
    for row, probs in zip(logits, probabilities, strict=True):
        order = np.argsort(-probs, kind="stable")[:k]
        top = [(model.class_names[i], float(probs[i])) for i in order]
        results.append(Prediction("", top, int(order[0]), row.copy()))
    return results


def predict_stream(
    sources: Iterable, model: Model, top_k: int = 5, batch_size: int = DEFAULT_BATCH_SIZE
) -> Iterator[Prediction]:
    """Yield one Prediction per source, in order, decoding at most ``batch_size`` images at a time."""
    if top_k < 1:
        raise ValueError(f"top_k must be at least 1, got {top_k}")
    pending: list[tuple[int, str, object]] = []  # (position, name, rgb image or error message)

    def flush() -> Iterator[Prediction]:
        good = [(i, img) for i, (_, _, img) in enumerate(pending) if not isinstance(img, str)]
        results: dict[int, Prediction] = {}
        if good:
            for (i, _), prediction in zip(good, classify_batch(model, [img for _, img in good], top_k), strict=True):
                results[i] = prediction
        for i, (_, name, img) in enumerate(pending):
            prediction = results.get(i) or Prediction(name, error=img)
            prediction.source = name
            yield prediction
        pending.clear()

    for position, source in enumerate(sources):
        name = describe(source)
        try:
            image = load_rgb(source)
        except ImageError as exc:
            image = str(exc)
        pending.append((position, name, image))
        if len(pending) >= batch_size:
            yield from flush()
    yield from flush()


def predict(
    images,
    model: str | os.PathLike | Model | None = None,
    top_k: int = 5,
    *,
    backend: str | None = None,
    batch_size: int = DEFAULT_BATCH_SIZE,
) -> Prediction | list[Prediction]:
    """Classify one image or many.

    ``images``: a path, a PIL image or an RGB array — or a list/tuple of them (then a list of
    Predictions comes back, in order, with ``error`` set on any input that could not be read).
    ``model``: a bundled model name, a ``.npz`` path, a loaded :class:`Model`, or None (default model).

    >>> import npshuffle
    >>> npshuffle.predict("examples/tulip.jpg").label   # doctest: +SKIP
    'tulips'
    """
    loaded = model if isinstance(model, Model) else load_model(model, backend=backend)
    if isinstance(images, (list, tuple)):
        loaded.expect(len(images))
        return list(predict_stream(images, loaded, top_k, batch_size))
    loaded.expect(1)
    (prediction,) = predict_stream([images], loaded, top_k, 1)
    if prediction.error is not None:
        raise ImageError(prediction.error)
    return prediction
