"""``npshuffle.batch``: a dict of arrays in (file bytes, paths or RGB arrays), a dict of arrays out,
the same answers as ``npshuffle.predict``; a broken input is an error row, never a failed batch."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

import npshuffle
from npshuffle.batch import BatchClassifier, classify_columns
from tests.conftest import REPO

PHOTOS = sorted(str(p) for p in (REPO / "examples").glob("*.jpg"))


def test_bytes_paths_and_arrays_give_predicts_answers_and_error_rows():
    model = npshuffle.load_model("flowers", backend="numpy")
    expected = npshuffle.predict(PHOTOS, model=model, top_k=2)
    data = np.array([open(p, "rb").read() for p in PHOTOS] + [b"not an image"], dtype=object)
    names = np.array(PHOTOS + ["broken.jpg"], dtype=object)
    by_bytes = classify_columns({"bytes": data, "path": names}, model, top_k=2)
    by_path = classify_columns({"path": np.array(PHOTOS, dtype=object)}, model, top_k=2)
    arrays = np.empty(len(PHOTOS), dtype=object)
    arrays[:] = [np.asarray(Image.open(p).convert("RGB")) for p in PHOTOS]
    by_array = classify_columns({"image": arrays}, model, top_k=2)
    for columns in (by_bytes, by_path, by_array):
        assert list(columns["class_index"][:3]) == [p.class_index for p in expected]
        np.testing.assert_allclose(columns["probability"][:3], [p.probability for p in expected], rtol=1e-5)
        assert [list(t) for t in columns["top_labels"][:3]] == [[label for label, _ in p.top] for p in expected]
    assert list(by_bytes["path"]) == list(names) and list(by_path["path"]) == PHOTOS
    assert by_bytes["class_index"][3] == -1 and np.isnan(by_bytes["probability"][3])
    assert by_bytes["error"][3].startswith("<12 bytes>: ") and by_bytes["label"][3] == ""
    assert list(by_bytes["error"][:3]) == ["", "", ""]


def test_the_callable_class_loads_its_model_once_with_its_own_threads():
    worker = BatchClassifier("flowers", top_k=1, threads=1)
    assert worker.model.settings == {"backend": "numba", "threads": 1, "schedule": None}
    first = worker({"path": np.array(PHOTOS, dtype=object)})
    second = worker({"path": np.array(PHOTOS[::-1], dtype=object)})
    assert list(first["label"]) == list(second["label"][::-1])
    with pytest.raises(ValueError, match="needs one of the columns"):
        worker({"images": np.array([])})
