"""Classifying images: the ``predict`` API behind ``npshuffle.predict`` and ``npshuffle predict``.

Images stream through in batches (``batch_size`` at a time: memory stays bounded however many
inputs there are). A broken input never stops the others: in a list, it comes back as a
:class:`Prediction` whose ``error`` says what was wrong; a single image raises :class:`ImageError`.
"""

from __future__ import annotations

import functools
import numbers
import os
import sys
import threading
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

import numpy as np

from .backends import DEFAULT_BACKEND
from .images import ImageError, describe, load_rgb
from .model import Model
from .pipeline import batches, default_workers, in_order, prepare_or_error
from .preprocess import preprocess_image
from .zoo import resolve

DEFAULT_BATCH_SIZE = 16


def softmax(logits, axis: int = -1) -> np.ndarray:
    """Probabilities from scores along ``axis``, in float32, computed as ``kernels.reference.softmax``
    (the test oracle) does: the max subtracted first, so that no exponent overflows."""
    z = np.asarray(logits, dtype=np.float32)
    z = z - z.max(axis=axis, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=axis, keepdims=True)


def mean_view_probabilities(logits: np.ndarray, views: int) -> np.ndarray:
    """Test-time augmentation's average: ``logits`` (N * views, classes), each photo's views
    consecutive -> float32 (N, classes), the mean of each photo's views' softmax probabilities
    (``npshuffle.tta`` says why probabilities, not logits)."""
    return softmax(logits, axis=1).reshape(-1, views, logits.shape[1]).mean(axis=1)


@dataclass
class Prediction:
    """The classification of one image.

    ``top``: ``(label, probability)`` pairs, best first (``top_k`` of them); ``class_index``: the
    top-1 class; ``logits``: the raw scores for every class, shape ``(num_classes,)`` (with
    test-time augmentation: the log of the views' averaged probabilities, so that softmax of it
    still gives the probabilities shown);
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


_LOADED: dict[tuple, Model] = {}  # (real path, backend, threads, schedule) -> Model


def load_model(name_or_path: str | os.PathLike | None = None, backend: str | None = None, *,
               threads: int | None = None, schedule: str | None = None) -> Model:
    """A ready model: a bundled name (see ``npshuffle list``) or a model file's path (``.npz`` or
    ``.safetensors``); None = the default.

    ``backend``: ``"auto"`` (default), ``"numpy"``, ``"numba"`` or ``"cuda"``. ``threads`` /
    ``schedule``: how the Numba CPU kernels (``numba``, and ``auto`` once a job moves to Numba)
    use the cores; see :class:`Model`. Loaded models are cached per (file, backend, settings), so
    repeated calls neither reload nor recompile. Raises ``ModelFileError`` (bad name, missing or
    malformed file), ``BackendError``, or ``ValueError`` for a bad setting.
    """
    name, path = resolve(name_or_path)
    key = (os.path.realpath(path), backend or DEFAULT_BACKEND, threads, schedule)
    if key not in _LOADED:
        model = Model.load(path, backend=backend, threads=threads, schedule=schedule)
        model.name = name
        _LOADED[key] = model
    return _LOADED[key]


def classify_batch(model: Model, inputs: np.ndarray, top_k: int, threads: int | None = None) -> list[Prediction]:
    """Classify preprocessed inputs, float32 (N, 3, crop, crop), in one forward pass (on ``threads``
    threads, see :meth:`Model.forward`); see :func:`predictions_from_logits`."""
    with np.errstate(all="ignore"):  # an overflow is reported per row, as an error
        logits = model.forward(inputs, threads=threads)
    return predictions_from_logits(model, logits, top_k)


def predictions_from_logits(model: Model, logits: np.ndarray, top_k: int) -> list[Prediction]:
    """One Prediction per row of ``logits`` (N, classes): the top ``top_k`` classes by probability.
    Sources are filled in by the caller. A row whose scores are not finite (a model file with
    absurd weights) comes back as an error naming the model, never as a printed probability."""
    with np.errstate(all="ignore"):
        probabilities = softmax(logits, axis=1)
    return predictions_from_probabilities(model, probabilities, logits, top_k)


def predictions_from_views(model: Model, logits: np.ndarray, views: int, top_k: int) -> list[Prediction]:
    """Test-time augmentation: ``logits`` (N * views, classes), each photo's views consecutive ->
    one Prediction per photo from the mean of its views' probabilities (``npshuffle.tta`` says why
    probabilities); its ``logits`` are the log of that mean.

    A class whose probability underflows to 0 in every view (a confident model: scores 100 apart)
    would have log 0 = -inf there, and the photo would be taken for a broken model's: the mean is
    floored at float32's smallest normal number first (its softmax differs by at most 1e-38). A
    photo is an error row when its views' own scores are not all finite, as in plain prediction."""
    with np.errstate(all="ignore"):
        probabilities = mean_view_probabilities(logits, views)
        averaged_logits = np.log(np.maximum(probabilities, np.finfo(np.float32).tiny))  # (NaN stays NaN)
    broken = ~np.isfinite(logits).reshape(len(probabilities), -1).all(axis=1)
    averaged_logits[broken] = np.nan  # (reported as an error by predictions_from_probabilities)
    return predictions_from_probabilities(model, probabilities, averaged_logits, top_k)


def predictions_from_probabilities(model: Model, probabilities: np.ndarray, logits: np.ndarray,
                                   top_k: int) -> list[Prediction]:
    """One Prediction per row of ``probabilities`` (N, classes), keeping the row of ``logits``."""
    results = []
    k = min(top_k, logits.shape[1])
    for row, probs in zip(logits, probabilities, strict=True):
        if not (np.isfinite(row).all() and np.isfinite(probs).all()):
            results.append(Prediction("", error=f"model {model.name} gave non-finite scores (its weights overflow "
                                                "float32): the model file is broken"))
            continue
        order = top_classes(probs, k)
        top = [(model.class_names[i], float(probs[i])) for i in order]
        results.append(Prediction("", top, int(order[0]), row.copy()))
    return results


def top_classes(probabilities: np.ndarray, k: int) -> np.ndarray:
    """The indices of the ``k`` largest of ``probabilities`` (classes,), largest first, equal ones in
    class order: ``np.argsort(-probabilities, kind="stable")[:k]``, without sorting every class
    (1,000 of them for ImageNet: the full sort cost more per photo than the lookups of its pixels)."""
    if k >= len(probabilities):
        return np.argsort(-probabilities, kind="stable")
    kth = np.partition(probabilities, len(probabilities) - k)[len(probabilities) - k]  # the k-th largest
    candidates = np.flatnonzero(probabilities >= kth)  # the top k and any equal to the k-th, in class order
    return candidates[np.argsort(-probabilities[candidates], kind="stable")[:k]]


def _exact_resampler():
    """The Numba kernels' one-pass resize + crop + normalise, when this process has loaded them
    (``npshuffle.backend_numba.exact_resampler``); None otherwise: this never imports Numba, so a
    run on the NumPy backend stays free of it. Either way the numbers are the same."""
    # (another thread may be importing the backend right now: a module half made counts as not loaded)
    ready = getattr(sys.modules.get("npshuffle.backend_numba"), "exact_resampler", None)
    return ready() if ready is not None else None


def prepare_input(source: object, recipe: dict, fast_decode: bool = False, pixels: list | None = None,
                  out: np.ndarray | None = None) -> np.ndarray:
    """One input (path, PIL image, array) -> float32 (3, crop, crop), or an ImageError whose message
    starts with the input's name and says why not. ``fast_decode``: decode a big photo straight to
    about twice the recipe's resize (JPEG draft mode, else ``Image.reduce``; see ``images.load_rgb``):
    several times faster on phone photos, not pixel-identical. ``pixels``: a list to append the
    decoded picture's pixel count to. ``out``: where to write the result (C-contiguous float32 (3,
    crop, crop), e.g. a row of the batch; returned)."""
    resampler = _exact_resampler()
    with _errors_named(source):
        # (the resampler turns a photo upright as it reads it: no need to turn it first)
        image = load_rgb(source, fast_decode_for=recipe["resize"] if fast_decode else None,
                         keep_orientation=resampler is not None)
        if pixels is not None:
            pixels.append(image.size[0] * image.size[1])
        return preprocess_image(image, recipe, resampler=resampler, out=out)


@contextmanager
def _errors_named(source: object):
    """Any failure to read or prepare ``source`` inside the block -> an ImageError whose message
    starts with the input's name and says why."""
    name = describe(source)
    try:
        yield
    except ImageError as exc:  # (preprocessing's own, e.g. a 1x10000 strip, do not know the name)
        message = str(exc)
        raise ImageError(message if message.startswith(name) else f"{name}: {message}") from None
    except (OSError, ValueError, SyntaxError, EOFError, MemoryError) as exc:  # PIL's own, on odd images
        raise ImageError(f"{name}: cannot be read as an image ({type(exc).__name__}: {exc})") from None


def prepare_views(source: object, recipe: dict, views: str) -> np.ndarray:
    """One input -> float32 (V, 3, crop, crop), the test-time augmentation views of
    :func:`npshuffle.tta.tta_views`, or an ImageError that names the input, as :func:`prepare_input`."""
    from .tta import tta_views  # (npshuffle.tta imports this module)

    with _errors_named(source):
        return tta_views(source, recipe, views)  # (it decodes the source itself)


def predict_stream(
    sources: Iterable, model: Model, top_k: int = 5, batch_size: int = DEFAULT_BATCH_SIZE, *,
    workers: int | None = None, fast_decode: bool = False, tta: str | None = None,
) -> Iterator[Prediction]:
    """Yield one Prediction per source, in order.

    Every input is decoded and preprocessed on its own: one that cannot be (unreadable, truncated,
    empty, a 1x10000 strip) becomes a Prediction with ``error`` set, and the rest are classified.

    The sources go in batches of ``batch_size`` to ``workers`` threads (default: one per core the
    network may use, :func:`npshuffle.pipeline.default_workers`; 1: no threads), each of which
    decodes and preprocesses its batch's photos and then runs the network on them: on one core
    when the model runs concurrent calls (Numba, :attr:`Model.concurrent`), otherwise taking turns
    with the other workers and using every core. At most ``workers + 1`` batches are in flight, so
    memory stays bounded however many sources there are (``npshuffle.pipeline``). ``fast_decode``:
    see :func:`prepare_input` (off by default: it changes pixels). ``tta``: ``"flip"`` or
    ``"ten-crop"``, test-time augmentation (:mod:`npshuffle.tta`): each photo's views go through the
    network in its batch and their probabilities are averaged (2 or 10 network passes' worth per
    photo; ``fast_decode`` does not apply). A batch then holds ``batch_size // V`` photos (one at
    least), so that a network pass still takes at most ``batch_size`` images, as in
    :func:`npshuffle.tta.tta_probabilities`.
    """
    if top_k < 1:
        raise ValueError(f"top_k must be at least 1, got {top_k}")
    # (0 would make no batch at all: every photo silently left out of the results)
    if not isinstance(batch_size, numbers.Integral) or batch_size < 1:
        raise ValueError(f"batch_size must be a whole number, at least 1, got {batch_size!r}")
    from .tta import photos_per_pass, view_count  # (npshuffle.tta imports this module)

    views = view_count(tta) if tta is not None else 1
    workers = default_workers(model.threads) if workers is None else workers
    recipe = model.recipe
    turns = threading.Lock()  # network calls that cannot run at the same time take turns

    told = threading.Event()  # the model was told the photos' size (once, from the first batch ready)

    def classify(batch: list) -> list[Prediction]:
        pixels: list[int] = []
        if tta:
            rows = [(describe(s), prepare_or_error(lambda s: prepare_views(s, recipe, tta), s)) for s in batch]
            good = [x for _, x in rows if not isinstance(x, str)]
            inputs = np.concatenate(good) if good else None  # (N * views, 3, crop, crop)
        else:  # each photo prepared straight into its row of the batch (no copy to stack them)
            crop = recipe["crop"]
            prepared = np.empty((len(batch), 3, crop, crop), np.float32)
            into_row = [functools.partial(prepare_input, recipe=recipe, fast_decode=fast_decode, pixels=pixels,
                                          out=prepared[i]) for i in range(len(batch))]
            rows = [(describe(s), prepare_or_error(prepare, s)) for prepare, s in zip(into_row, batch, strict=True)]
            good = [i for i, (_, x) in enumerate(rows) if not isinstance(x, str)]
            inputs = (prepared if len(good) == len(batch) else prepared[good]) if good else None  # (N, 3, crop, crop)
        if pixels and not told.is_set():
            told.set()
            model.expect_pixels(float(np.median(pixels)))  # (backend "auto": big photos make Numba pay sooner)
        threads = 1 if workers > 1 and model.concurrent else None  # this worker's batch on this worker's core
        if inputs is None:
            results = iter([])
        elif threads == 1:
            results = iter(run_network(model, inputs, views, top_k, threads))
        else:
            with turns:
                results = iter(run_network(model, inputs, views, top_k, threads))
        predictions = []
        for name, x in rows:
            prediction = Prediction(name, error=x) if isinstance(x, str) else next(results)
            prediction.source = name
            predictions.append(prediction)
        return predictions

    for predictions in in_order(batches(sources, photos_per_pass(batch_size, views)), classify, workers, workers + 1):
        yield from predictions


def run_network(model: Model, inputs: np.ndarray, views: int, top_k: int, threads: int | None) -> list[Prediction]:
    """:func:`classify_batch`, or with ``views`` > 1 the TTA average of each photo's views."""
    if views == 1:
        return classify_batch(model, inputs, top_k, threads=threads)
    with np.errstate(all="ignore"):
        logits = model.forward(inputs, threads=threads)
    return predictions_from_views(model, logits, views, top_k)


def predict(
    images,
    model: str | os.PathLike | Model | None = None,
    top_k: int = 5,
    *,
    backend: str | None = None,
    batch_size: int = DEFAULT_BATCH_SIZE,
    workers: int | None = None,
    fast_decode: bool = False,
    tta: str | None = None,
) -> Prediction | list[Prediction]:
    """Classify one image or many.

    ``images``: a path, a PIL image or an RGB array — or a list/tuple of them (then a list of
    Predictions comes back, in order, with ``error`` set on any input that could not be read).
    ``model``: a bundled model name, a model file's path (.npz or .safetensors), a loaded :class:`Model`,
    or None (default model).
    ``workers``: threads that decode and preprocess ahead of the network (see :func:`predict_stream`).
    ``fast_decode``: decode big photos straight to about twice the model's input size (opt-in: it
    changes pixels; see :func:`prepare_input`).
    ``tta``: ``"flip"`` or ``"ten-crop"``: test-time augmentation, see :func:`predict_stream` (it
    costs 2x / 7x the time and gained no accuracy on the flower models: ``docs/robustness.md``).

    >>> import npshuffle
    >>> npshuffle.predict("examples/tulip.jpg").label   # doctest: +SKIP
    'tulips'
    """
    loaded = model if isinstance(model, Model) else load_model(model, backend=backend)
    if isinstance(images, (list, tuple)):
        loaded.expect(len(images))
        return list(predict_stream(images, loaded, top_k, batch_size, workers=workers, fast_decode=fast_decode,
                                   tta=tta))
    loaded.expect(1)
    (prediction,) = predict_stream([images], loaded, top_k, 1, workers=1, fast_decode=fast_decode, tta=tta)
    if prediction.error is not None:
        raise ImageError(prediction.error)
    return prediction
