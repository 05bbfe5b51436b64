"""Batches for data engines: a dict of arrays in, a dict of arrays out.

Ray Data's ``map_batches`` (and pandas, Arrow tables) hand a function a batch as a dict of column
name -> NumPy array. :func:`classify_columns` classifies such a batch; :class:`BatchClassifier`
is the callable class an engine keeps one instance of per worker (Ray Data's actor pools), so
the model is loaded, and its Numba kernels loaded from the cache, once per worker, with a thread
count of its own (several workers on a node must not each start every core's worth of threads).

Input columns (one of the first three, and ``path`` to name the rows):

* ``bytes``: each row an encoded image file's bytes (what ``ray.data.read_binary_files`` gives);
* ``path``: each row a file path (read here);
* ``image``: each row an RGB array ``(H, W, 3)`` uint8.

Output columns, one row per input row, in order: ``path`` (str: the given name, or the input's
description), ``class_index`` (int64, -1 for an input that could not be classified), ``label``
(str, "" then), ``probability`` (float32, NaN then), ``top_labels`` and ``top_probabilities``
(object arrays of lists, best first), ``error`` (str, "" when the row is fine). A broken input is a
row with its error, never a failed batch.
"""

from __future__ import annotations

import os

import numpy as np

from .model import Model
from .predict import DEFAULT_BATCH_SIZE, Prediction, load_model, predict_stream

INPUT_COLUMNS = ("bytes", "path", "image")


def _sources(batch: dict) -> tuple[list, list[str] | None]:
    """The inputs of a batch and their names (None: describe them)."""
    names = [os.fspath(p) for p in batch["path"]] if "path" in batch else None
    for column in INPUT_COLUMNS:
        if column in batch:
            return list(batch[column]), names
    raise ValueError(f"a batch needs one of the columns {', '.join(INPUT_COLUMNS)}; got {', '.join(batch) or 'none'}")


def as_columns(predictions: list[Prediction], names: list[str] | None = None) -> dict[str, np.ndarray]:
    """Predictions as output columns (see the module docstring)."""
    rows = len(predictions)
    columns = {
        "path": np.array([names[i] if names else p.source for i, p in enumerate(predictions)], dtype=object),
        "class_index": np.array([p.class_index for p in predictions], dtype=np.int64),
        "label": np.array([p.label or "" for p in predictions], dtype=object),
        "probability": np.array([p.probability if p.ok else np.nan for p in predictions], dtype=np.float32),
        "top_labels": np.empty(rows, dtype=object),
        "top_probabilities": np.empty(rows, dtype=object),
        "error": np.array([p.error or "" for p in predictions], dtype=object),
    }
    for i, p in enumerate(predictions):
        columns["top_labels"][i] = [label for label, _ in p.top]
        columns["top_probabilities"][i] = [probability for _, probability in p.top]
    return columns


def classify_columns(batch: dict, model: Model, top_k: int = 5, batch_size: int = DEFAULT_BATCH_SIZE,
                     fast_decode: bool = False) -> dict[str, np.ndarray]:
    """Classify a batch given as columns (see the module docstring), on this thread and the model's
    threads (the engine runs batches in parallel, one per worker)."""
    sources, names = _sources(batch)
    if names is not None and len(names) != len(sources):
        raise ValueError(f"the path column has {len(names)} rows, the inputs {len(sources)}")
    model.expect(len(sources))
    predictions = list(predict_stream(sources, model, top_k, batch_size, workers=1, fast_decode=fast_decode))
    return as_columns(predictions, names)


class BatchClassifier:
    """``BatchClassifier(model, top_k=5, threads=1)(batch) -> columns``: a model loaded once per
    instance (per worker), on ``backend`` (default Numba, the fastest for a long job) with
    ``threads`` threads. For Ray Data::

        ds.map_batches(BatchClassifier, fn_constructor_kwargs={"model": "flowers", "threads": 1},
                       concurrency=4, batch_size=64)
    """

    def __init__(self, model: str | os.PathLike | None = None, top_k: int = 5, threads: int | None = 1,
                 backend: str = "numba", batch_size: int = DEFAULT_BATCH_SIZE, fast_decode: bool = False):
        self.model = load_model(model, backend=backend, threads=threads)
        self.top_k, self.batch_size, self.fast_decode = top_k, batch_size, fast_decode

    def __call__(self, batch: dict) -> dict[str, np.ndarray]:
        return classify_columns(batch, self.model, self.top_k, self.batch_size, self.fast_decode)
