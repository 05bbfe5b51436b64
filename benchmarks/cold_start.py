"""What a user waits for, in fresh processes: first photo, second photo, warm-up, a folder.

    python benchmarks/cold_start.py [--repeat 3] [--folder DIR] [--out results.md]

Every command runs as a user would type it, in a new process, with its own Numba cache folder
(``NUMBA_CACHE_DIR``; npshuffle caches in ``$NUMBA_CACHE_DIR/npshuffle``), so "empty cache" means a
first run on a new machine and nothing in the repository's own cache is touched:

* ``import npshuffle``;
* the README's first command, ``npshuffle predict examples/tulip.jpg``, on an empty cache, then
  again (the cache as the first run left it);
* ``npshuffle warmup`` on an empty cache, and again (already warm);
* ``npshuffle predict FOLDER -k 1 -f csv`` over 200 photos, on an empty cache and on a warmed one;
* the reference: a minimal ONNX Runtime + PIL script classifying the same photo in a fresh process
  (the default model's architecture, ShuffleNet V1 g3 0.5x, random weights exported through the
  torch oracle; needs the ``bench`` extra). Its model file is written before the clock starts.

Each short command is run ``--repeat`` times (a new empty cache each time where the row says so)
and the table shows the median and the range; the warm-up and folder rows run once. The folder is
200 photos from ``../shared/data/flower_photos`` (40 per class) unless ``--folder`` names another.
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
PHOTO = REPO / "examples" / "tulip.jpg"
FLOWERS = REPO.parent / "shared" / "data" / "flower_photos"

ORT_SCRIPT = """
import sys, numpy as np, onnxruntime as ort
from PIL import Image
session = ort.InferenceSession(sys.argv[1], providers=["CPUExecutionProvider"])
image = Image.open(sys.argv[2]).convert("RGB")
w, h = image.size; s = 256 / min(w, h)
image = image.resize((round(w * s), round(h * s)), Image.BILINEAR)
left, top = (image.width - 224) // 2, (image.height - 224) // 2
x = np.asarray(image.crop((left, top, left + 224, top + 224)), np.float32)[:, :, ::-1].transpose(2, 0, 1)
print(int(session.run(None, {"input": np.ascontiguousarray(x)[None]})[0].argmax()))
"""


def npshuffle_command() -> list[str]:
    """The ``npshuffle`` console script next to this Python, as the README runs it."""
    script = Path(sys.executable).parent / "npshuffle"
    return [str(script)] if script.exists() else [sys.executable, "-m", "npshuffle"]


def timed(command: list[str], cache: str | None = None) -> tuple[float, subprocess.CompletedProcess]:
    env = dict(os.environ)
    if cache is not None:
        env["NUMBA_CACHE_DIR"] = cache
    start = time.perf_counter()
    out = subprocess.run(command, capture_output=True, text=True, cwd=REPO, env=env)
    wall = time.perf_counter() - start
    if out.returncode not in (0, 1):  # (1: some photos of a folder could not be read)
        raise SystemExit(f"{' '.join(command)} failed ({out.returncode}): {out.stderr.strip()[-500:]}")
    return wall, out


def summary(times: list[float]) -> str:
    if len(times) == 1:
        return f"{times[0]:.2f} s"
    return f"{statistics.median(times):.2f} s ({min(times):.2f}-{max(times):.2f})"


def photo_folder(root: Path, given: str | None) -> Path:
    if given:
        return Path(given)
    folder = root / "photos"
    folder.mkdir()
    if FLOWERS.is_dir():
        for label in sorted(p for p in FLOWERS.iterdir() if p.is_dir()):
            for photo in sorted(label.glob("*.jpg"))[:40]:
                (folder / f"{label.name}_{photo.name}").symlink_to(photo)
    else:  # no shared data: the bundled examples, repeated
        examples = sorted((REPO / "examples").glob("*.jpg"))
        for i in range(200):
            shutil.copy(examples[i % len(examples)], folder / f"{i:03d}.jpg")
    return folder


def onnx_reference(root: Path) -> Path | None:
    """The default model's architecture with random weights, as an ONNX file (None without the extra)."""
    try:
        import onnxruntime  # noqa: F401
        import torch
    except ImportError:
        return None
    from npshuffle.archs import v1_spec
    from npshuffle.training.torch_ref import build_torch_model, randomize_

    sys.path.insert(0, str(REPO / "benchmarks"))
    from bench_common import exportable

    net = randomize_(build_torch_model(v1_spec(3, "0.5x", 5), "megvii"), torch.Generator().manual_seed(0)).eval()
    path = root / "v1_g3_x0_5.onnx"
    torch.onnx.export(exportable(net), torch.zeros(1, 3, 224, 224), str(path), input_names=["input"],
                      output_names=["logits"], dynamo=False)
    return path


def run(args) -> str:
    rows: list[tuple[str, str, str]] = []
    npshuffle = npshuffle_command()
    predict_photo = [*npshuffle, "predict", str(PHOTO.relative_to(REPO))]
    with tempfile.TemporaryDirectory(prefix="npshuffle-cold-") as tmp:
        root = Path(tmp)
        folder = photo_folder(root, args.folder)
        count = sum(1 for _ in folder.iterdir())
        onnx_file = onnx_reference(root)

        times = [timed([sys.executable, "-c", "import npshuffle"])[0] for _ in range(args.repeat)]
        rows.append(("`python -c 'import npshuffle'`", "—", summary(times)))

        first, second = [], []
        for i in range(args.repeat):
            cache = str(root / f"cache-predict-{i}")
            first.append(timed(predict_photo, cache)[0])
            second.append(timed(predict_photo, cache)[0])
        rows.append(("`npshuffle predict examples/tulip.jpg` (the README's first command), first run", "empty",
                     summary(first)))
        rows.append(("the same command again", "as the first run left it", summary(second)))

        warm_cache = str(root / "cache-warm")
        wall, out = timed([*npshuffle, "warmup"], warm_cache)
        rows.append(("`npshuffle warmup`", "empty", f"{wall:.2f} s"))
        print(out.stdout.strip(), file=sys.stderr)
        again = [timed([*npshuffle, "warmup"], warm_cache)[0] for _ in range(args.repeat)]
        rows.append(("`npshuffle warmup` again", "warm", summary(again)))

        predict_folder = [*npshuffle, "predict", str(folder), "-k", "1", "-f", "csv"]
        wall, out = timed(predict_folder, str(root / "cache-folder"))
        rows.append((f"`npshuffle predict FOLDER -k 1 -f csv`, {count} photos", "empty", f"{wall:.2f} s"))
        note = out.stderr.strip()
        wall, out = timed(predict_folder, warm_cache)
        rows.append((f"the same folder, {count} photos", "warm (after warmup)", f"{wall:.2f} s"))

        if onnx_file is not None:
            script = root / "ort_predict.py"
            script.write_text(ORT_SCRIPT)
            times = [timed([sys.executable, str(script), str(onnx_file), str(PHOTO)])[0] for _ in range(args.repeat)]
            rows.append(("reference: minimal ONNX Runtime + PIL script, same photo", "—", summary(times)))

    lines = [
        f"Fresh processes on {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, Python "
        f"{platform.python_version()}; `python benchmarks/cold_start.py --repeat {args.repeat}`"
        f" ({time.strftime('%Y-%m-%d')}). Wall time, median (min-max) of {args.repeat} where repeated.",
        "",
        "| what | Numba cache | wall |",
        "|---|---|---:|",
        *[f"| {what} | {cache} | {wall} |" for what, cache, wall in rows],
    ]
    if note:
        lines += ["", "stderr of the folder run on an empty cache: " + " / ".join(note.splitlines()[:3])]
    return "\n".join(lines) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeat", type=int, default=3, help="runs of each short command (default 3)")
    parser.add_argument("--folder", help="a folder of photos instead of 200 from ../shared")
    parser.add_argument("--out", help="also write the table to this file")
    args = parser.parse_args()
    report = run(args)
    from bench_common import publish

    publish(report, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
