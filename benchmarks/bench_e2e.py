"""End-to-end photo benchmark: photos/s from JPEG files to top-1 classes, npshuffle against a PIL + ONNX Runtime script.

    python benchmarks/bench_e2e.py --out benchmarks/results_e2e.md            # the full run (~10 min on 2 cores)
    python benchmarks/bench_e2e.py --small 48 --big 4 --repeat 1 --out /tmp/e2e.md   # a quick look
    python benchmarks/bench_e2e.py --peak-memory --out /tmp/e2e.md            # + peak RSS over 2,000 photos

Photo sets:

* **small**: the flower_photos validation split (``../shared/data/flower_photos``; seed 0, 20 %,
  ``npshuffle.training.datasets.seed_split``: 731 photos, most of them 256 px on the shorter side);
  ``--small N`` keeps the first N of the split's order;
* **big**: ``--big N`` (default 100) synthetic 12-megapixel JPEGs: split photos spread over the
  split, upscaled to 4000x3000 with PIL bicubic and saved at quality 90, written once into
  ``--cache`` (default ``~/.cache/npshuffle/bench_e2e``) and reused.

Models: the bundled ``flowers`` (V1 g3 0.5x, 5 classes, Megvii recipe), and V2 x1.0 (1000 classes,
torchvision recipe) with random weights and BN statistics, built as ``bench_cpu.py`` does (torch
oracle -> ``weights_convert`` -> model file, and the same torch network -> ONNX). For ``flowers`` the
ONNX file is the same architecture and dialect (``torch_ref`` MegviiV1 g3 0.5x, 5 classes) with random
weights: the speed of a network does not depend on its weight values. Both ONNX exports are checked
against npshuffle running the same weights (the report's "agreement" line).

Rows (each timed over the whole photo set, batches of 16, the median of ``--repeat`` runs,
the methods interleaved within each repeat):

1. ``npshuffle predict DIR -k 1 -f csv`` as a fresh process (wall time: start-up, imports, model load,
   all photos, CSV out), after ``npshuffle warmup`` (the Numba cache is warm); DIR holds symlinks;
2. ``npshuffle.predict(paths, model=model, top_k=1)`` in-process, the model loaded (default backend) and
   run once before timing;
3. the same with ``fast_decode=True`` when the installed npshuffle has it (and the CLI ``--fast-decode``);
4. ``e2e_onnx_script.py``: PIL open/convert/resize/crop, NumPy normalise, ``InferenceSession.run``
   (default session options, session made before timing);
5. the network alone: ``model.forward`` (Numba backend) on the same batches, already preprocessed (the ceiling).

Plus where ``npshuffle.predict``'s time goes: ``images.load_rgb`` (decode), ``preprocess.preprocess_image``
(resize, crop, normalise) and ``model.forward`` timed separately over the same photos, each on one
thread as one of predict's per-core workers runs them; and the rate those parts predict for predict:
cores / (their sum), as if the workers never slowed each other down (an estimate, not a ceiling:
timed apart, on a machine otherwise idle, the parts do not run at the speed they have in predict).
``--peak-memory``: a fresh process runs ``npshuffle.predict`` over 2,000 photos (the small set's paths
repeated) and reports its peak RSS.
"""

from __future__ import annotations

import argparse
import inspect
import json
import os
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_common import REPO, child_env, onnx_bytes, publish, versions  # noqa: E402
from e2e_onnx_script import classify as ort_classify  # noqa: E402

FLOWERS = REPO.parent / "shared" / "data" / "flower_photos"
BATCH = 16
PEAK_PHOTOS = 2000
METHODS = ("cli", "cli_fast", "predict", "predict_fast", "ort", "network")
LABELS = {
    "cli": "1. CLI `npshuffle predict DIR -k 1 -f csv` (fresh process)",
    "cli_fast": "1b. CLI with `--fast-decode` (fresh process)",
    "predict": "2. `npshuffle.predict(paths, model=...)`",
    "predict_fast": "3. `npshuffle.predict(..., fast_decode=True)`",
    "ort": "4. ONNX Runtime + PIL script",
    "network": "5. network alone (`model.forward`, Numba)",
}


# --------------------------------------------------------------------------------------------------
# models


@dataclass
class Case:
    """One model: npshuffle's file (and the CLI's --model argument), the ONNX export, the recipe."""

    name: str
    model_arg: str  # what `--model` / load_model get
    onnx: bytes
    ort_recipe: dict
    note: str
    check_npz: str  # a model file with exactly the ONNX file's weights (the agreement check)
    agreement: float | None = None
    extra: dict = field(default_factory=dict)


def ort_recipe_of(recipe: dict) -> dict:
    return {"resize": recipe["resize"], "crop": recipe["crop"], "bgr": recipe["channel_order"] == "BGR",
            "scale": recipe["scale"], "mean": tuple(recipe["mean"]), "std": tuple(recipe["std"])}


def random_model(spec, dialect: str, seed: int, path: Path):
    """(torch net with random weights, the npshuffle model file of it written at ``path``)."""
    import torch

    from npshuffle.model_file import save_model_file
    from npshuffle.training.torch_ref import build_torch_model, randomize_
    from weights_convert.convert import convert_state_dict

    net = randomize_(build_torch_model(spec, dialect), torch.Generator().manual_seed(seed)).eval()
    converted = convert_state_dict({k: v.numpy() for k, v in net.state_dict().items()})
    save_model_file(path, converted.spec, converted.dialect, converted.weights)
    return net, str(path)


def build_cases(workdir: Path, which: list[str]) -> list[Case]:
    from npshuffle.archs import v1_spec, v2_spec
    from npshuffle.model_file import load_model_file
    from npshuffle.zoo import resolve

    cases = []
    if "flowers" in which:
        _, path = resolve("flowers")
        bundled = load_model_file(path)
        spec = v1_spec(3, "0.5x", 5)
        if bundled.spec != spec or bundled.dialect != "megvii":
            raise SystemExit(f"bundled flowers is {bundled.spec} ({bundled.dialect}), not {spec} (megvii): update "
                             "bench_e2e.py")
        net, check = random_model(spec, "megvii", 0, workdir / "v1_g3_0_5x_megvii_random.npz")
        recipe = ort_recipe_of(bundled.metadata["preprocess"])
        cases.append(Case("flowers (V1 g3 0.5x)", "flowers", onnx_bytes(net), recipe,
                          "npshuffle: the bundled weights; ONNX: the same architecture and dialect, random weights",
                          check))
    if "v2" in which:
        net, npz = random_model(v2_spec("1.0x", 1000), "torchvision", 0, workdir / "v2_x1_0_random.npz")
        recipe = load_model_file(npz).metadata["preprocess"]
        cases.append(Case("V2 x1.0 (random weights)", npz, onnx_bytes(net), ort_recipe_of(recipe),
                          "npshuffle and ONNX: the same random weights", npz))
    return cases


def session_for(onnx: bytes):
    import onnxruntime as ort

    return ort.InferenceSession(onnx, providers=["CPUExecutionProvider"])  # a user's default options


def agreement(case: Case, batch: np.ndarray) -> float:
    """max |npshuffle - ORT| / max |ORT| on one real batch, same weights."""
    from npshuffle.model import Model

    expected = session_for(case.onnx).run(None, {"input": batch})[0]
    got = Model.load(case.check_npz, backend="numba").forward(batch)
    return float(np.abs(got - expected).max() / np.abs(expected).max())


# --------------------------------------------------------------------------------------------------
# photo sets


def small_set(root: Path, limit: int | None) -> list[str]:
    from npshuffle.training.datasets import seed_split

    split = seed_split(root, 0.2, seed=0)
    return [str(root / p) for p in split.val[:limit]]


def big_set(sources: list[str], count: int, cache: Path) -> list[str]:
    """``count`` 4000x3000 JPEGs (quality 90) upscaled (bicubic) from photos spread over ``sources``; made once."""
    from PIL import Image

    cache.mkdir(parents=True, exist_ok=True)
    paths = []
    made = 0
    start = time.perf_counter()
    for i in range(count):
        src = sources[i * len(sources) // count]
        out = cache / f"big_{i:03d}_{Path(src).parent.name}_{Path(src).stem}.jpg"
        if not out.exists():
            with Image.open(src) as image:
                big = image.convert("RGB").resize((4000, 3000), Image.Resampling.BICUBIC)
            tmp = out.with_suffix(".tmp")
            big.save(tmp, format="JPEG", quality=90)
            os.replace(tmp, out)
            made += 1
        paths.append(str(out))
    if made:
        print(f"  made {made} 12 MP JPEGs in {cache} ({time.perf_counter() - start:.0f} s)", file=sys.stderr)
    return paths


def link_folder(paths: list[str], folder: Path) -> Path:
    """A folder of symlinks to ``paths`` (what the CLI is given), in the same order as the list."""
    folder.mkdir(parents=True, exist_ok=True)
    for i, p in enumerate(paths):
        (folder / f"{i:05d}_{Path(p).name}").symlink_to(os.path.abspath(p))
    return folder


# --------------------------------------------------------------------------------------------------
# the methods


def features() -> dict[str, bool]:
    import npshuffle

    api = "fast_decode" in inspect.signature(npshuffle.predict).parameters
    help_text = subprocess.run([sys.executable, "-m", "npshuffle", "predict", "--help"], capture_output=True,
                               text=True, env=child_env()).stdout
    return {"api": api, "cli": "--fast-decode" in help_text}


def run_cli(model_arg: str, folder: Path, photos: int, fast: bool) -> float:
    command = [sys.executable, "-m", "npshuffle", "predict", str(folder), "-k", "1", "-f", "csv", "--model", model_arg]
    if fast:
        command.append("--fast-decode")
    start = time.perf_counter()
    out = subprocess.run(command, capture_output=True, text=True, env=child_env())
    wall = time.perf_counter() - start
    if out.returncode != 0:
        raise SystemExit(f"{' '.join(command)} failed: {out.stderr.strip()[-500:]}")
    rows = [line for line in out.stdout.splitlines() if line.strip()]
    if len(rows) < photos:  # (a header line, then one per photo)
        raise SystemExit(f"{' '.join(command)} printed {len(rows)} lines for {photos} photos")
    return wall


def breakdown(model, paths: list[str]) -> dict[str, float]:
    """Seconds in decode, preprocess and network over ``paths`` in batches of 16, each on one thread, as
    each of npshuffle.predict's per-core workers does them (the network on one thread where the backend
    runs concurrent calls, else on all of them, as predict's workers take turns)."""
    from npshuffle.images import load_rgb
    from npshuffle.preprocess import preprocess_image

    recipe = model.recipe
    model.forward(np.zeros((1, 3, recipe["crop"], recipe["crop"]), np.float32))  # (the kernels loaded)
    # the one-pass resize + crop + normalise predict uses once the Numba kernels are loaded (None: PIL;
    # versions before it have no such function)
    resampler = getattr(sys.modules["npshuffle.predict"], "_exact_resampler", lambda: None)()
    options = {"resampler": resampler} if resampler is not None else {}
    # as predict decodes for the resampler: a turned photo left as stored (the resampler reads it turned)
    keep = ({"keep_orientation": True} if resampler is not None
            and "keep_orientation" in inspect.signature(load_rgb).parameters else {})
    into_rows = "out" in inspect.signature(preprocess_image).parameters  # (as predict: no stacking copy)
    crop = recipe["crop"]
    # worker_network: on one worker's thread(s); network: on every thread (row 5, the network alone)
    total = {"decode": 0.0, "preprocess": 0.0, "worker_network": 0.0, "network": 0.0}
    threads = 1 if getattr(model, "concurrent", False) else None
    for i in range(0, len(paths), BATCH):
        t0 = time.perf_counter()
        images = [load_rgb(p, **keep) for p in paths[i:i + BATCH]]
        t1 = time.perf_counter()
        if into_rows:
            batch = np.empty((len(images), 3, crop, crop), np.float32)
            for row, im in zip(batch, images, strict=True):
                preprocess_image(im, recipe, out=row, **options)
        else:
            batch = np.stack([preprocess_image(im, recipe, **options) for im in images])
        t2 = time.perf_counter()
        model.forward(batch, **({"threads": threads} if threads is not None else {}))
        t3 = time.perf_counter()
        model.forward(batch)
        t4 = time.perf_counter()
        total["decode"] += t1 - t0
        total["preprocess"] += t2 - t1
        total["worker_network"] += t3 - t2
        total["network"] += t4 - t3
    return total


def measure_set(case: Case, paths: list[str], folder: Path, repeat: int, fast: dict[str, bool]) -> dict:
    import npshuffle
    from npshuffle.model import Model
    from npshuffle.zoo import resolve

    model = npshuffle.load_model(case.model_arg)
    numba_model = Model.load(resolve(case.model_arg)[1], backend="numba")
    session = session_for(case.onnx)
    warm = paths[:BATCH]  # first calls (thread pools, kernel loading) before any timing
    npshuffle.predict(warm, model=model, top_k=1)
    ort_classify(warm, session, case.ort_recipe, BATCH)
    breakdown(numba_model, warm)

    def predict(**kw):
        results = npshuffle.predict(paths, model=model, top_k=1, **kw)
        bad = [r.error for r in results if not r.ok]
        if bad:
            raise SystemExit(f"npshuffle.predict: {len(bad)} errors, e.g. {bad[0]}")

    runs = {"cli": lambda: run_cli(case.model_arg, folder, len(paths), False),
            "predict": lambda: predict()}
    if fast["cli"]:
        runs["cli_fast"] = lambda: run_cli(case.model_arg, folder, len(paths), True)
    if fast["api"]:
        runs["predict_fast"] = lambda: predict(fast_decode=True)
    runs["ort"] = lambda: ort_classify(paths, session, case.ort_recipe, BATCH)

    walls: dict[str, list[float]] = {name: [] for name in runs}
    parts: list[dict[str, float]] = []
    for r in range(repeat):
        for name, run in runs.items():
            time.sleep(0.2)  # the previous method's spinning threads go to sleep
            start = time.perf_counter()
            extra = run()
            walls[name].append(extra if name.startswith("cli") else time.perf_counter() - start)
        time.sleep(0.2)
        parts.append(breakdown(numba_model, paths))
        print(f"    repeat {r + 1}/{repeat}: " + ", ".join(f"{k} {v[-1]:.2f} s" for k, v in walls.items())
              + f", network {parts[-1]['network']:.2f} s", file=sys.stderr)
    result = {name: statistics.median(w) for name, w in walls.items()}
    part = {k: statistics.median(p[k] for p in parts) for k in parts[0]}
    result["network"] = part["network"]
    return {"walls": result, "parts": part, "status": model.status, "photos": len(paths)}


# --------------------------------------------------------------------------------------------------
# peak memory (a fresh process)

PEAK_PROBE = r"""
import json, resource, sys, time
import npshuffle
paths = json.load(open(sys.argv[2]))
def status_kib(key):
    with open("/proc/self/status") as f:
        return int(next(line.split()[1] for line in f if line.startswith(key)))
model = npshuffle.load_model(sys.argv[1])
before = status_kib("VmRSS")
start = time.perf_counter()
results = npshuffle.predict(paths, model=model, top_k=1)
wall = time.perf_counter() - start
print(json.dumps({"photos": len(results), "ok": sum(r.ok for r in results), "wall": wall, "rss_before_kib": before,
                  "ru_maxrss_kib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss,
                  "vmhwm_kib": status_kib("VmHWM")}))
"""


# ru_maxrss survives exec: a probe started straight from this process (torch, ORT, photos loaded) would
# report this process's peak. Probes are therefore started by a small launcher process, itself started
# before anything heavy is loaded.
LAUNCHER = r"""
import json, subprocess, sys
for line in sys.stdin:
    out = subprocess.run(json.loads(line), capture_output=True, text=True)
    print(json.dumps({"rc": out.returncode, "stdout": out.stdout, "stderr": out.stderr[-2000:]}), flush=True)
"""


def start_launcher() -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", LAUNCHER], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            text=True, env=child_env())


def peak_memory(launcher: subprocess.Popen, case: Case, paths: list[str], workdir: Path) -> dict:
    repeated = (paths * (PEAK_PHOTOS // len(paths) + 1))[:PEAK_PHOTOS]
    listing = workdir / "peak_paths.json"
    listing.write_text(json.dumps(repeated))
    launcher.stdin.write(json.dumps([sys.executable, "-c", PEAK_PROBE, case.model_arg, str(listing)]) + "\n")
    launcher.stdin.flush()
    out = json.loads(launcher.stdout.readline())
    if out["rc"] != 0:
        raise SystemExit(f"peak-memory probe failed: {out['stderr'].strip()[-500:]}")
    return json.loads(out["stdout"].strip().splitlines()[-1])


# --------------------------------------------------------------------------------------------------
# the report


def table(title: str, cases: list[Case], measured: dict, fast: dict[str, bool]) -> list[str]:
    lines = [f"## {title}", "", "| method | model | photos | wall s | photos/s | ratio to ONNX Runtime |",
             "|---|---|---:|---:|---:|---:|"]
    for case in cases:
        m = measured[case.name]
        n = m["photos"]
        ort_rate = n / m["walls"]["ort"]
        for method in METHODS:
            if method == "cli_fast" and not fast["cli"]:
                continue
            if method not in m["walls"]:
                lines.append(f"| {LABELS[method]} | {case.name} | {n} | n/a (no fast_decode in this version) | | |")
                continue
            wall = m["walls"][method]
            lines.append(f"| {LABELS[method]} | {case.name} | {n} | {wall:.2f} | {n / wall:.1f} | "
                         f"{n / wall / ort_rate:.2f}x |")
    from npshuffle.pipeline import default_workers

    cores = default_workers()  # predict's workers by default: one per core
    lines += ["", "Where `npshuffle.predict`'s time goes (load_rgb / preprocess_image / model.forward timed apart, "
              "same photos, batches of 16, each on one thread as one of predict's per-core workers runs them). "
              f"\"Estimate\": {cores} cores / (decode + preprocess + network), the rate if the {cores} workers never "
              "slowed each other (an estimate, not a ceiling: predict can beat it), and as a ratio to the ONNX "
              "Runtime script's rate in the same run:", "",
              "| model | decode ms/photo | preprocess ms/photo | network ms/photo (1 thread) | decode | preprocess | "
              "network | estimate photos/s | estimate / ONNX Runtime | predict's backend |",
              "|---|---:|---:|---:|---:|---:|---:|---:|---:|---|"]
    for case in cases:
        m = measured[case.name]
        n, p = m["photos"], m["parts"]
        net = p["worker_network"]
        total = p["decode"] + p["preprocess"] + net
        estimate = cores * n / total
        lines.append(f"| {case.name} | {p['decode'] / n * 1e3:.2f} | {p['preprocess'] / n * 1e3:.2f} | "
                     f"{net / n * 1e3:.2f} | {p['decode'] / total:.0%} | {p['preprocess'] / total:.0%} | "
                     f"{net / total:.0%} | {estimate:.0f} | {estimate / (n / m['walls']['ort']):.2f}x | "
                     f"{m['status']} |")
    return lines + [""]


def source_of_npshuffle() -> str:
    import npshuffle

    folder = Path(npshuffle.__file__).resolve().parent.parent
    head = subprocess.run(["git", "-C", str(folder), "log", "-1", "--format=%h %s"], capture_output=True, text=True)
    return f"`{folder}`" + (f" (commit {head.stdout.strip()[:80]})" if head.returncode == 0 else "")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    parser.add_argument("--out", help="markdown file to write the report to (also printed)")
    parser.add_argument("--small", type=int, metavar="N", help="first N photos of the validation split (default all)")
    parser.add_argument("--photos", default=str(FLOWERS), help="the flower_photos folder (default ../shared/...)")
    parser.add_argument("--big", type=int, default=100, metavar="N", help="12 MP JPEGs (default 100; 0 skips)")
    parser.add_argument("--repeat", type=int, default=3, help="runs per method, the median reported (default 3)")
    parser.add_argument("--models", default="flowers,v2", help="comma-separated: flowers, v2 (default both)")
    parser.add_argument("--cache", default=os.path.join(os.environ.get("XDG_CACHE_HOME", "~/.cache"), "npshuffle",
                                                        "bench_e2e"), help="where the 12 MP JPEGs are kept")
    parser.add_argument("--note", help="a line for the report (e.g. which commit of npshuffle ran)")
    parser.add_argument("--peak-memory", action="store_true", help=f"peak RSS of npshuffle.predict over {PEAK_PHOTOS} "
                        "photos in a fresh process")
    args = parser.parse_args()
    command = shlex.join(["python", "benchmarks/bench_e2e.py", *sys.argv[1:]])
    if os.environ.get("NUMBA_CACHE_DIR"):
        command = f"NUMBA_CACHE_DIR={os.environ['NUMBA_CACHE_DIR']} {command}"
    launcher = start_launcher() if args.peak_memory else None

    print("npshuffle warmup ...", file=sys.stderr)
    warm = subprocess.run([sys.executable, "-m", "npshuffle", "warmup"], capture_output=True, text=True,
                          env=child_env())
    if warm.returncode != 0:
        raise SystemExit(f"npshuffle warmup failed: {warm.stderr.strip()[-500:]}")
    fast = features()
    small = small_set(Path(args.photos), args.small)
    with tempfile.TemporaryDirectory(prefix="bench_e2e_") as tmp:
        workdir = Path(tmp)
        cases = build_cases(workdir, [m.strip() for m in args.models.split(",")])
        sets = [("small", f"Small photos: flower_photos validation split (seed 0, 20 %"
                 f"{', first ' + str(len(small)) if args.small else ''}; {len(small)} photos)", small)]
        if args.big > 0:
            big = big_set(small_set(Path(args.photos), None), args.big, Path(os.path.expanduser(args.cache)))
            sets.append(("big", f"Big photos: {len(big)} synthetic 12-megapixel JPEGs (4000x3000, quality 90)", big))
        from npshuffle.images import load_rgb
        from npshuffle.preprocess import preprocess_image

        for case in cases:
            from npshuffle.model_file import load_model_file

            recipe = load_model_file(case.check_npz).metadata["preprocess"]
            batch = np.stack([preprocess_image(load_rgb(p), recipe) for p in small[:BATCH]])
            case.agreement = agreement(case, batch)
        results = {}
        for key, title, paths in sets:
            folder = link_folder(paths, workdir / key)
            results[key] = (title, {})
            for case in cases:
                print(f"  {key}: {case.name}, {len(paths)} photos x {args.repeat}", file=sys.stderr)
                results[key][1][case.name] = measure_set(case, paths, folder, args.repeat, fast)
        peaks = {case.name: peak_memory(launcher, case, small, workdir) for case in cases} if launcher else {}
        if launcher:
            launcher.stdin.close()
            launcher.wait()

    lines = ["# End-to-end photo benchmark (`benchmarks/bench_e2e.py`)", "",
             f"Machine: {versions()}", "", f"Command: `{command}` ({time.strftime('%Y-%m-%d %H:%M')})", "",
             f"Numba cache warm (`npshuffle warmup` ran first); batches of {BATCH}; each figure the median of "
             f"{args.repeat} run(s), the methods interleaved. The CLI rows are fresh processes (start-up, imports, "
             "model load and CSV output included); the in-process rows have the model (or ONNX session) loaded and "
             "run once before timing. ONNX Runtime: default session options, `e2e_onnx_script.py`. "
             f"fast_decode: API {'yes' if fast['api'] else 'no'}, CLI {'yes' if fast['cli'] else 'no'}.", "",
             *([args.note, ""] if args.note else []), f"npshuffle imported from {source_of_npshuffle()}", "",
             "Models:"]
    lines += [f"- {c.name}: {c.note}; npshuffle vs ONNX Runtime on the same weights: max |diff| / max |logit| "
              f"= {c.agreement:.1e}" for c in cases]
    lines.append("")
    for _, (title, measured) in results.items():
        lines += table(title, cases, measured, fast)
    if peaks:
        lines += [f"## Peak memory: `npshuffle.predict` over {PEAK_PHOTOS} photos in a fresh process", "",
                  "(the small set's paths repeated; the model loaded first; ru_maxrss = getrusage(RUSAGE_SELF) at the "
                  "end, the probe started by a small launcher so that no big parent's peak is inherited across exec; "
                  "VmHWM = /proc/self/status, the same peak as the kernel counts it for this process image)", "",
                  "| model | photos | wall s | photos/s | RSS after model load MiB | peak RSS (ru_maxrss) MiB | "
                  "VmHWM MiB |", "|---|---:|---:|---:|---:|---:|---:|"]
        for name, p in peaks.items():
            lines.append(f"| {name} | {p['photos']} ({p['ok']} ok) | {p['wall']:.1f} | {p['photos'] / p['wall']:.1f} "
                         f"| {p['rss_before_kib'] / 1024:.0f} | {p['ru_maxrss_kib'] / 1024:.0f} | "
                         f"{p['vmhwm_kib'] / 1024:.0f} |")
        lines.append("")
    report = "\n".join(lines)
    publish(report, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
