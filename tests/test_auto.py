"""--device auto: the per-job choice, the stamp that says the kernels are cached, the background
compile and the switch to Numba, and where the cache goes when the package folder is read-only."""

from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pytest

import npshuffle
from npshuffle import kernel_cache
from npshuffle.auto import PREPROCESS_SAVING_S_PER_PIXEL, AutoRunner, BackgroundCompile, Crossover, choose
from npshuffle.backends import BackendError
from tests.conftest import REPO

TULIP = str(REPO / "examples" / "tulip.jpg")


def run_python(code: str, **env) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=600,
                          cwd=REPO, env={**os.environ, **env})


# -- the choice ------------------------------------------------------------------------------------


@pytest.mark.parametrize("images, warm, expected", [
    (1, True, "numpy"), (39, True, "numpy"), (40, True, "numba"), (5000, True, "numba"),
    (1, False, "numpy"), (40, False, "numpy"), (999, False, "numpy"), (1000, False, "compile"),
])
def test_choice_follows_job_size_and_cache_state(images, warm, expected):
    assert choose(images, warm, Crossover(warm=40, cold=1000)) == expected


def test_crossovers_follow_the_measured_timings():
    # Numba saves 10 ms per image and costs 0.5 s to start: it pays from 50 images; a 30 s compile
    # lasts 30 / 0.012 = 2500 NumPy images, so a cold job must be 50 more than that
    c = Crossover.from_timings(numba_start_s=0.5, numpy_s=0.012, numba_s=0.002, compile_s=30.0)
    assert (c.warm, c.cold) == (50, 2550)
    never = Crossover.from_timings(numba_start_s=0.5, numpy_s=0.002, numba_s=0.003, compile_s=30.0)
    assert never.warm == math.inf and choose(10**9, True, never) == "numpy"


def test_big_photos_make_numba_pay_sooner(monkeypatch, tmp_path):
    """Numba's resampler saves ~2 ns a photo pixel over PIL's resize: 12 MP photos save ~24 ms
    each on top of the network's 10 ms, so the warm crossover drops from 50 images to 15."""
    monkeypatch.delenv("NPSHUFFLE_AUTO_CROSSOVER", raising=False)
    c = Crossover.from_timings(numba_start_s=0.5, numpy_s=0.012, numba_s=0.002, compile_s=30.0,
                               extra_saving_s=PREPROCESS_SAVING_S_PER_PIXEL * 12e6)
    assert c.warm == 15
    log: list = []
    model = npshuffle.load_model("flowers_v2", backend="numpy")
    auto = AutoRunner(model.file.plan, model.file.weights, is_warm=lambda: True, log=log.append)
    monkeypatch.setattr(kernel_cache, "read_stamp", lambda directory=None: {"measured": {
        "numba_start_s": 0.5, "numpy_s": 0.012, "numba_s": 0.002, "compile_s": 30.0}})
    auto.expect(20)
    auto(batch(1))
    assert auto.status == "numpy"  # 20 small photos: not worth starting Numba
    auto.expect(20)
    auto.expect_pixels(12e6)
    auto(batch(1))
    assert auto.status == "numba"  # 20 photos of 12 MP: worth it


def test_crossover_override_from_the_environment(monkeypatch):
    monkeypatch.setenv("NPSHUFFLE_AUTO_CROSSOVER", "7,70")
    assert Crossover.current() == Crossover(7, 70)
    monkeypatch.setenv("NPSHUFFLE_AUTO_CROSSOVER", "lots")
    with pytest.raises(BackendError, match="NPSHUFFLE_AUTO_CROSSOVER"):
        Crossover.current()


def test_a_small_job_never_imports_numba():
    out = run_python(
        "import sys, npshuffle\n"
        f"p = npshuffle.predict({TULIP!r})\n"
        "print(p.label, 'numba' in sys.modules)\n"
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["tulips", "False"]


def runner(warm: bool, crossover: Crossover, log: list) -> AutoRunner:
    model = npshuffle.load_model("flowers_v2", backend="numpy")
    return AutoRunner(model.file.plan, model.file.weights, crossover=crossover, is_warm=lambda: warm,
                      log=log.append)


def batch(n: int, size: int = 192) -> np.ndarray:
    return np.random.default_rng(n).random((n, 3, size, size), dtype=np.float32)


def test_a_large_job_on_a_warm_cache_runs_on_numba():
    log = []
    r = runner(warm=True, crossover=Crossover(10, 100), log=log)
    r.expect(5)
    r(batch(2))
    assert r.status == "numpy"  # 5 images: below the crossover
    r.expect(50)
    logits = r(batch(4))
    assert r.status == "numba" and log == []
    reference = r.numpy_runner(batch(4))
    np.testing.assert_allclose(logits, reference, rtol=1e-4, atol=1e-4 * np.abs(reference).max())


def test_a_job_of_one_large_batch_runs_on_numba_too():
    r = runner(warm=True, crossover=Crossover(3, 100), log=[])
    r.expect(4)
    r(batch(4))
    assert r.status == "numba"


def test_a_large_job_on_a_cold_cache_starts_on_numpy_and_switches_after_the_compile():
    """The compile really runs (``npshuffle warmup --child``); the predictions agree either way."""
    log = []
    r = runner(warm=False, crossover=Crossover(2, 8), log=log)
    r.expect(40)
    x = batch(4)
    first = r(x)
    assert r.status == "numpy, compiling numba" and "compile in the background" in log[0]
    np.testing.assert_array_equal(first, r.numpy_runner(x))  # still NumPy's answer, bitwise
    assert r.background.proc.wait(timeout=600) == 0, r.background.error()
    switched = r(x)
    assert r.status == "numba" and "switching to Numba for the remaining 36 images" in log[1]
    np.testing.assert_allclose(switched, first, rtol=1e-4, atol=1e-4 * np.abs(first).max())
    assert kernel_cache.is_warm()  # the child wrote the stamp


def test_the_background_compile_does_not_outlive_its_parent():
    # a parent that dies without cleaning up (os._exit skips atexit): the child sees its standard
    # input close and exits
    out = run_python(
        "import os\n"
        "from npshuffle.auto import BackgroundCompile\n"
        "c = BackgroundCompile(); print(c.proc.pid, flush=True); os._exit(0)\n"
    )
    pid = int(out.stdout.split()[0])
    deadline = time.time() + 20
    while time.time() < deadline and os.path.exists(f"/proc/{pid}") and "Z" not in _state(pid):
        time.sleep(0.1)
    assert not os.path.exists(f"/proc/{pid}") or "Z" in _state(pid), "the compile outlived its parent"
    # and an orderly stop kills it at once
    c = BackgroundCompile()
    c.stop()
    assert c.proc.returncode is not None


def _stat(pid: int) -> list[str]:
    """The fields of /proc/PID/stat after the command name: [state, parent pid, ...]; [] if gone."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return []


def _state(pid: int) -> str:
    return (_stat(pid) or ["Z"])[0]


# -- the stamp and the cache folder ----------------------------------------------------------------


def test_stamp_matches_only_this_machine_and_these_sources(tmp_path):
    assert not kernel_cache.is_warm(tmp_path)
    kernel_cache.write_stamp({"numpy_s": 0.01}, tmp_path)
    assert not kernel_cache.is_warm(tmp_path)  # a stamp but no Numba index files
    (tmp_path / "cpu.forward-1.py311.nbi").write_bytes(b"index")
    assert kernel_cache.is_warm(tmp_path)
    stamp = json.loads((tmp_path / kernel_cache.STAMP_NAME).read_text())
    for key, other in (("machine", "another CPU"), ("kernels", "edited sources"), ("numba", "0.1")):
        (tmp_path / kernel_cache.STAMP_NAME).write_text(json.dumps({**stamp, key: other}))
        assert not kernel_cache.is_warm(tmp_path), key


@pytest.mark.parametrize("content", [b"", b"{not json", b"[1, 2]", b"[" * 100_000, b"\xff\xfe" * 10])
def test_a_corrupt_stamp_means_cold_not_a_crash(tmp_path, content):
    (tmp_path / kernel_cache.STAMP_NAME).write_bytes(content)
    (tmp_path / "cpu.forward-1.py311.nbi").write_bytes(b"index")
    assert kernel_cache.read_stamp(tmp_path) is None and not kernel_cache.is_warm(tmp_path)
    kernel_cache.write_stamp({}, tmp_path)  # rewritten whole
    assert kernel_cache.is_warm(tmp_path)


def test_numba_cache_dir_is_honoured(tmp_path, monkeypatch):
    monkeypatch.setenv("NUMBA_CACHE_DIR", str(tmp_path))
    assert kernel_cache.cache_dir() == (tmp_path / "npshuffle", "NUMBA_CACHE_DIR")


def as_another_user() -> list[str] | None:
    """A command prefix that runs as an unprivileged user (root ignores read-only permissions)."""
    if os.geteuid() != 0:
        return []
    setpriv = shutil.which("setpriv")
    return [setpriv, "--reuid=65534", "--regid=65534", "--clear-groups"] if setpriv else None


@pytest.fixture
def world_readable_tmp():
    """A temporary folder another user can enter (pytest's own lie inside a folder only we can)."""
    path = Path(tempfile.mkdtemp(prefix="npshuffle-test-"))
    os.chmod(path, 0o755)
    yield path
    shutil.rmtree(path, ignore_errors=True)


def test_a_read_only_install_caches_in_the_users_cache_folder(world_readable_tmp):
    prefix = as_another_user()
    if prefix is None:
        pytest.skip("running as root without setpriv: cannot make a folder read-only")
    tmp_path = world_readable_tmp
    install = tmp_path / "install"
    for package in ("npshuffle", "kernels", "weights_convert"):
        shutil.copytree(REPO / package, install / package, ignore=shutil.ignore_patterns("__pycache__"))
    if os.geteuid() != 0:
        for root, dirs, _ in os.walk(install):
            for d in dirs:
                os.chmod(os.path.join(root, d), 0o555)
    home = tmp_path / "home"
    home.mkdir()
    os.chmod(home, 0o777)
    code = (
        # (a development checkout installed with `pip install -e` maps its packages with a meta path
        # finder that would win over PYTHONPATH: leave it out, so the read-only copy is imported)
        "import sys\n"
        "sys.meta_path = [f for f in sys.meta_path if 'editable' not in repr(f).lower()]\n"
        "import numpy as np\n"
        "from npshuffle import kernel_cache\n"
        f"assert str(kernel_cache.KERNELS_DIR.parent) == {str(install)!r}, kernel_cache.__file__\n"
        "print(kernel_cache.cache_dir()[0])\n"
        "import npshuffle.backend_numba\n"
        # every cached Numba function of the kernels package, and where Numba will cache it
        "paths = {f._cache._cache_path for name, m in list(sys.modules.items()) if name.startswith('kernels.')\n"
        "         for f in vars(m).values() if hasattr(getattr(f, '_cache', None), '_cache_path')}\n"
        "print(*paths)\n"
    )
    env = {"PATH": os.environ["PATH"], "PYTHONPATH": str(install), "XDG_CACHE_HOME": str(home), "HOME": str(home)}
    out = subprocess.run(prefix + [sys.executable, "-c", code], capture_output=True, text=True, timeout=300,
                         cwd=home, env=env)
    assert out.returncode == 0, out.stderr
    expected = str(home / "npshuffle" / "numba")
    assert out.stdout.split() == [expected, expected]
    assert not (install / "kernels" / "__pycache__").exists()


def children_of(pid: int) -> list[int]:
    return [int(e) for e in os.listdir("/proc") if e.isdigit() and _stat(int(e))[1:2] == [str(pid)]]


@pytest.mark.skipif(not os.path.isdir("/proc"), reason="needs /proc to find child processes")
def test_the_compile_helper_does_not_outlive_a_parent_killed_mid_compile(tmp_path):
    """A cold first Numba run starts a helper process; SIGKILL the parent (no clean-up runs) and the
    helper must go too."""
    env = {**os.environ, "NUMBA_CACHE_DIR": str(tmp_path), "NPSHUFFLE_COMPILE_HELPER": "1"}
    parent = subprocess.Popen(
        [sys.executable, "-c", "import numpy as np, npshuffle\n"
         "m = npshuffle.load_model(backend='numba'); m.forward(np.zeros((1, 3, 224, 224), np.float32))"],
        env=env, cwd=REPO, stderr=subprocess.DEVNULL)
    deadline, helpers = time.time() + 60, []
    while time.time() < deadline and not helpers and parent.poll() is None:
        time.sleep(0.2)
        helpers = children_of(parent.pid)
    assert helpers, "no compile helper was started"
    parent.kill()
    parent.wait()
    deadline = time.time() + 20
    while time.time() < deadline and any(os.path.exists(f"/proc/{p}") and _state(p) != "Z" for p in helpers):
        time.sleep(0.1)
    assert not any(os.path.exists(f"/proc/{p}") and _state(p) != "Z" for p in helpers)


def test_a_corrupt_kernel_cache_is_rebuilt_not_a_crash(tmp_path):
    """Fill a cache, then damage it (garbage index files, truncated code files, a garbage stamp):
    the next run recompiles what it must and answers as before."""
    env = {**os.environ, "NUMBA_CACHE_DIR": str(tmp_path)}
    command = [sys.executable, "-m", "npshuffle", "predict", TULIP, "--device", "numba", "-f", "json"]
    first = subprocess.run(command, capture_output=True, text=True, cwd=REPO, env=env, timeout=600)
    assert first.returncode == 0, first.stderr
    cache = tmp_path / "npshuffle"
    files = sorted(p for p in cache.iterdir() if p.suffix in (".nbi", ".nbc"))
    assert files and kernel_cache.is_warm(cache)
    rng = np.random.default_rng(0)
    for i, path in enumerate(files):
        if i % 3 == 0:  # a third of them: garbage, truncated, or emptied
            data = path.read_bytes()
            path.write_bytes([rng.bytes(len(data)), data[: len(data) // 2], b""][i % 9 // 3])
    (cache / kernel_cache.STAMP_NAME).write_bytes(b"\x00garbage")
    again = subprocess.run(command, capture_output=True, text=True, cwd=REPO, env=env, timeout=600)
    assert again.returncode == 0 and "Traceback" not in again.stderr, again.stderr
    assert json.loads(again.stdout)[0]["top"] == json.loads(first.stdout)[0]["top"]
