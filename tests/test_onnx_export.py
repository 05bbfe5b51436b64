"""``npshuffle export MODEL -o model.onnx``: a standard ONNX graph that ONNX Runtime runs to npshuffle's numbers.

Every bundled model (V1 in the Megvii dialect, V2 in torchvision's) on the example photos, each
preprocessed with the model's own recipe, and small random V1 torchvision / V2 Megvii networks
(the two dialect-version pairs no bundled model has) against npshuffle and torch: logits within
1e-4 relative, the same top-1, at batch 1 and 4 (the batch dimension is dynamic).
"""

from __future__ import annotations

import glob
import json
import subprocess
import sys

import numpy as np
import pytest

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")

from PIL import Image  # noqa: E402

from npshuffle.archs import V1Spec, V2Spec  # noqa: E402
from npshuffle.cli import main as cli  # noqa: E402
from npshuffle.model import Model  # noqa: E402
from npshuffle.model_file import DEFAULT_RECIPES, load_model_file, save_model_file  # noqa: E402
from npshuffle.preprocess import preprocess_batch  # noqa: E402
from npshuffle.zoo import ENTRIES, bundled_path  # noqa: E402
from tests.conftest import REPO  # noqa: E402

RTOL = 1e-4  # max |onnx - npshuffle| / max |npshuffle|, per model
PHOTOS = sorted(glob.glob(str(REPO / "examples" / "*.jpg")))


def export(tmp_path, model: str) -> onnx.ModelProto:
    out = tmp_path / "model.onnx"
    assert cli(["export", model, "-o", str(out)]) == 0
    return onnx.load(str(out))


def session(proto: onnx.ModelProto) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1  # (the test machines share their cores)
    return ort.InferenceSession(proto.SerializeToString(), options, providers=["CPUExecutionProvider"])


def relative_error(got: np.ndarray, want: np.ndarray) -> float:
    return float(np.abs(got - want).max() / np.abs(want).max())


def check_agreement(proto: onnx.ModelProto, model_path, x: np.ndarray) -> float:
    """ONNX Runtime against npshuffle's NumPy backend at batch 4 and each image at batch 1;
    returns the largest relative error."""
    ours = Model.load(model_path, backend="numpy").forward(x)
    runtime = session(proto)
    theirs = runtime.run(["logits"], {"input": x})[0]
    assert theirs.shape == ours.shape and theirs.dtype == np.float32
    errors = [relative_error(theirs, ours)]
    for i in range(len(x)):
        one = runtime.run(["logits"], {"input": x[i: i + 1]})[0]
        errors.append(relative_error(one, ours[i: i + 1]))
    assert max(errors) < RTOL, errors
    np.testing.assert_array_equal(theirs.argmax(1), ours.argmax(1))
    return max(errors)


@pytest.fixture(scope="module")
def photos():
    images = [Image.open(p).convert("RGB") for p in PHOTOS]
    return images + [images[0].transpose(Image.Transpose.FLIP_LEFT_RIGHT)]  # a fourth photo for batch 4


@pytest.mark.parametrize("entry", ENTRIES, ids=lambda e: e.name)
def test_every_bundled_model_runs_in_onnx_runtime_to_npshuffles_logits(tmp_path, entry, photos):
    proto = export(tmp_path, entry.name)
    onnx.checker.check_model(proto, full_check=True)
    model = load_model_file(bundled_path(entry))
    x = preprocess_batch(photos, model.recipe)  # the model's own recipe (BGR 0..255 for Megvii's)
    assert x.shape == (4, 3, model.recipe["crop"], model.recipe["crop"])
    error = check_agreement(proto, bundled_path(entry), x)
    print(f"{entry.name}: max relative logit error {error:.2e}")


SMALL = {
    "v1_torchvision": (V1Spec(3, 12, (48, 96), (2, 2), num_classes=7), "torchvision"),
    "v1_g2_torchvision": (V1Spec(2, 8, (32, 64), (1, 2), num_classes=3), "torchvision"),
    "v2_megvii": (V2Spec(8, (16, 32), 48, (2, 2), num_classes=5), "megvii"),
    "v1_g4_megvii": (V1Spec(4, 16, (48, 96), (2, 1), num_classes=4), "megvii"),
    "v2_torchvision": (V2Spec(8, (16, 32), 48, (2, 2), num_classes=5), "torchvision"),
}


@pytest.mark.parametrize("name", SMALL)
def test_both_dialects_of_both_versions_match_npshuffle_and_torch(tmp_path, name):
    torch = pytest.importorskip("torch")
    from npshuffle.training.torch_ref import build_torch_model, randomize_
    from weights_convert import convert_state_dict

    spec, dialect = SMALL[name]
    net = randomize_(build_torch_model(spec, dialect), torch.Generator().manual_seed(5))
    converted = convert_state_dict({k: v.numpy() for k, v in net.state_dict().items()})
    path = tmp_path / "small.npz"
    save_model_file(path, converted.spec, converted.dialect, converted.weights,
                    recipe={**DEFAULT_RECIPES[dialect], "resize": 80, "crop": 64})
    proto = export(tmp_path, str(path))
    onnx.checker.check_model(proto, full_check=True)
    ops = {n.op_type for n in proto.graph.node}
    if spec.version == 2:  # torchvision splits into halves, Megvii takes the even and the odd channels
        assert ("Split" in ops, "Slice" in ops) == ((True, False) if dialect == "torchvision" else (False, True))
    x = np.random.default_rng(1).standard_normal((4, 3, 64, 64)).astype(np.float32)
    check_agreement(proto, path, x)
    with torch.no_grad():
        want = net(torch.from_numpy(x)).numpy()
    assert relative_error(session(proto).run(None, {"input": x})[0], want) < RTOL


def test_the_graph_is_plain_onnx_with_the_recipe_and_classes_in_its_metadata(tmp_path):
    proto = export(tmp_path, "flowers")  # V1 g3, Megvii dialect
    model = load_model_file(bundled_path(ENTRIES[0]))
    assert [(o.domain, o.version) for o in proto.opset_import] == [("", 17)]
    assert proto.ir_version == 8  # opset 17's, so that older runtimes load it too
    (image,), (logits,) = proto.graph.input, proto.graph.output
    dims = [d.dim_param or d.dim_value for d in image.type.tensor_type.shape.dim]
    assert image.name == "input" and dims == ["batch", 3, 224, 224]
    assert image.type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    assert logits.name == "logits" and [d.dim_param or d.dim_value for d in logits.type.tensor_type.shape.dim] == [
        "batch", 5]
    props = {p.key: p.value for p in proto.metadata_props}
    assert json.loads(props["preprocess"]) == model.recipe and model.recipe["channel_order"] == "BGR"
    assert json.loads(props["class_names"]) == model.class_names
    assert json.loads(props["npshuffle"]) == model.metadata
    ops = {n.op_type for n in proto.graph.node}
    assert ops == {"Conv", "Relu", "MaxPool", "AveragePool", "Concat", "Add", "Reshape", "Transpose",
                   "GlobalAveragePool", "Flatten", "Gemm"}
    attrs = {n.name: {a.name: onnx.helper.get_attribute_value(a) for a in n.attribute} for n in proto.graph.node}
    assert attrs["units.0.shortcut"] == {"kernel_shape": [3, 3], "strides": [2, 2], "pads": [1, 1, 1, 1],
                                         "count_include_pad": 1}
    assert attrs["units.1.pw1"]["group"] == 3 and attrs["units.1.dw"]["group"] == 30
    assert attrs["units.1.shuffle.transpose"]["perm"] == [0, 2, 1, 3, 4]
    assert {i.name for i in proto.graph.initializer} >= set(model.weights)


def test_without_onnx_the_command_says_what_to_install(tmp_path):
    out = tmp_path / "x.onnx"
    code = ("import sys; sys.modules['onnx'] = None; from npshuffle.cli import main; "
            f"sys.exit(main(['export', 'flowers', '-o', {str(out)!r}]))")
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=REPO)
    assert run.returncode == 2 and run.stdout == "" and not out.exists()
    assert run.stderr.count("\n") == 1 and 'pip install "npshuffle[onnx]"' in run.stderr, run.stderr


def test_npshuffle_imports_no_onnx_until_asked():
    code = ("import sys, npshuffle, npshuffle.export, npshuffle.cli; from npshuffle.cli import main; "
            "main(['list']); print(sorted(m for m in ('onnx', 'onnxruntime') if m in sys.modules))")
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=REPO)
    assert run.returncode == 0 and run.stdout.rstrip().endswith("[]"), run.stdout + run.stderr
