"""Where the compiled Numba kernels live, and whether they are there, without importing numba.

The Numba backend compiles ``kernels/cpu/`` once per machine and keeps the machine code in a cache
directory (Numba's ``cache=True``). Importing numba alone costs ~0.5 s, so the question "are the
kernels compiled for this machine?" must be answerable without it: that is what the *stamp* is,
a small JSON file written beside the cache by the process that compiled (or loaded) the kernels:

    {"npshuffle": "0.1.0", "numba": "0.68.1", "python": "3.11.7 ...", "machine": "<hash of the CPU
     name and feature flags>", "kernels": "<hash of the kernel sources>", "measured": {...}}

The cache is *warm* when the stamp matches this process's versions, CPU and kernel sources and
the cache still holds Numba's index files. (Numba keeps its own checks too: a stale entry is
recompiled, never run.) All models share one set of compiled kernels: they differ in data
(weights, step tables), not in the types the kernels are compiled for.

Where the cache is, first that works:

1. ``$NUMBA_CACHE_DIR/npshuffle`` when the user set ``NUMBA_CACHE_DIR``;
2. ``kernels/__pycache__`` beside the installed package, when it is writable (a virtualenv);
3. the user's cache directory, ``$XDG_CACHE_HOME/npshuffle/numba`` (``~/.cache/...``), for a
   read-only install (system-wide, or a container running as another user).

When none is writable the kernels still run, compiled anew in every process.
:func:`install_locator` makes Numba use the chosen directory for the files of ``kernels/cpu/``
only (other Numba users in the process keep their own settings), and makes it treat those files
as one source: Numba checks a cached function against its own file only, but a kernel compiles in
constants and inlined helpers from the package's other files, so an edit to any of them must
recompile them all.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import platform
import sys
from importlib import metadata
from pathlib import Path

from .atomic import write_atomically

STAMP_NAME = "npshuffle-kernels.json"
STAMP_MAX_BYTES = 64 * 1024
KERNELS_DIR = Path(__file__).resolve().parent.parent / "kernels"
# the kernel sources whose machine code is cached: the package kernels.cpu (kernels.reference is
# plain NumPy, kernels.cuda is numba.cuda and caches nothing here)
CPU_KERNELS_DIR = KERNELS_DIR / "cpu"
# cache files a cpu.py module at the top of kernels/ would leave (npshuffle <= 0.1.0 had one, and an
# upgraded install may still hold them): clear() removes them too
OLD_PREFIXES = ("cpu.",)


def user_cache_root() -> Path:
    """The per-user cache directory of this OS (no third-party ``appdirs``)."""
    if sys.platform == "win32":
        return Path(os.environ.get("LOCALAPPDATA") or Path.home() / "AppData" / "Local")
    if sys.platform == "darwin":
        return Path.home() / "Library" / "Caches"
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")


def _writable(path: Path) -> bool:
    """Could files be created in ``path``: it is a writable folder, or its nearest existing
    ancestor is one, so it can be made? (Asked without creating anything.)"""
    while not path.exists():
        if path.parent == path:
            return False
        path = path.parent
    return path.is_dir() and os.access(path, os.W_OK | os.X_OK)


def candidates() -> list[tuple[Path, str]]:
    """The cache directories to try, in order, each with why it is a candidate."""
    env = os.environ.get("NUMBA_CACHE_DIR")
    if env:
        return [(Path(env) / "npshuffle", "NUMBA_CACHE_DIR")]
    return [
        (KERNELS_DIR / "__pycache__", "beside the installed package"),
        (user_cache_root() / "npshuffle" / "numba", "the user's cache directory (the package folder is read-only)"),
    ]


def cache_dir() -> tuple[Path | None, str]:
    """(the directory the kernels are cached in, why that one); (None, why) when none is writable."""
    tried = []
    for path, why in candidates():
        if _writable(path):
            return path, why
        tried.append(str(path))
    return None, "no writable cache directory (tried " + ", ".join(tried) + "): the kernels compile in every process"


def _machine() -> str:
    """A hash of this CPU's name and feature flags: compiled code is only valid on the CPU it was
    compiled for (Numba compiles for the host CPU's instruction set)."""
    text = platform.machine() + platform.processor()
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            fields = {}
            for line in f:
                if not line.strip():
                    break  # the first processor is enough: they are alike
                key, _, value = line.partition(":")
                fields[key.strip()] = value.strip()
        text += fields.get("model name", "") + " " + fields.get("flags", fields.get("Features", ""))
    except OSError:  # not Linux
        pass
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _cpu_kernel_files() -> list[Path]:
    return sorted(CPU_KERNELS_DIR.glob("*.py"))


def _kernel_sources() -> str:
    """A hash of the kernel sources Numba compiles: their contents, and their modification times
    and sizes, which is what older Numba versions check (a reinstall of the same code makes their
    cache stale, so it must make the stamp stale too)."""
    digest = hashlib.sha256()
    for path in _cpu_kernel_files():
        stat = path.stat()
        digest.update(f"{path.name}\0{stat.st_mtime_ns}\0{stat.st_size}\0".encode() + path.read_bytes())
    return digest.hexdigest()[:16]


@functools.lru_cache(maxsize=4)
def _package_hash(files: tuple[tuple[str, int, int], ...]) -> str:
    """The contents of the kernel package's files, hashed as one (``files``: name, mtime, size of
    each, so that an edit while the process runs is hashed anew)."""
    digest = hashlib.sha256()
    for name, _, _ in files:
        digest.update(name.encode() + b"\0" + (CPU_KERNELS_DIR / name).read_bytes() + b"\0")
    return digest.hexdigest()


def package_stamp() -> str:
    """What Numba's cache index records as the "source stamp" of every kernel: one hash of all the
    files of ``kernels/cpu/`` (see :func:`install_locator`)."""
    stats = [(path.name, path.stat()) for path in _cpu_kernel_files()]
    return _package_hash(tuple((name, st.st_mtime_ns, st.st_size) for name, st in stats))


def _version(package: str) -> str:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return "not installed"


def identity() -> dict:
    """What a stamp must match for the cached kernels to be usable by this process."""
    from . import __version__

    return {
        "npshuffle": __version__,
        "numba": _version("numba"),
        "python": sys.version.split()[0] + " " + platform.python_implementation(),
        "machine": _machine(),
        "kernels": _kernel_sources(),
    }


def read_stamp(directory: Path | None = None) -> dict | None:
    """The stamp in ``directory`` (default: the cache directory), or None if absent or unreadable."""
    directory = directory or cache_dir()[0]
    if directory is None:
        return None
    path = directory / STAMP_NAME
    try:
        if not path.is_file() or path.stat().st_size > STAMP_MAX_BYTES:
            return None
        stamp = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError, RecursionError):  # a corrupt stamp is no stamp
        return None
    return stamp if isinstance(stamp, dict) else None


def is_warm(directory: Path | None = None) -> bool:
    """Are the kernels compiled and cached for this machine, these versions and these sources?"""
    directory = directory or cache_dir()[0]
    stamp = read_stamp(directory)
    if stamp is None or any(stamp.get(key) != value for key, value in identity().items()):
        return False
    return has_index(directory)


def has_index(directory: Path) -> bool:
    """Does ``directory`` hold any of Numba's cache index files (``*.nbi``)?"""
    try:
        return any(name.endswith(".nbi") for name in os.listdir(directory))
    except OSError:
        return False


def write_stamp(measured: dict | None = None, directory: Path | None = None) -> Path | None:
    """Record that the kernels are compiled (atomically: a temporary file renamed into place).
    ``measured``: timings to keep for the automatic backend choice (merged into earlier ones)."""
    if directory is None and not locator_installed:
        return None  # Numba caches by its own rules, not in cache_dir(): a stamp there would lie
    directory = directory or cache_dir()[0]
    if directory is None:
        return None
    old, ours = read_stamp(directory) or {}, identity()
    keep = old.get("measured", {}) if all(old.get(k) == v for k, v in ours.items()) else {}
    stamp = {**ours, "measured": {**keep, **(measured or {})}}
    try:
        directory.mkdir(parents=True, exist_ok=True)
        write_atomically(directory / STAMP_NAME, lambda f: f.write(json.dumps(stamp, indent=1).encode()))
    except OSError:
        return None
    return directory / STAMP_NAME


def clear(directory: Path | None = None) -> None:
    """Delete the cached kernels and the stamp (a corrupt cache is rebuilt from nothing)."""
    directory = directory or cache_dir()[0]
    if directory is None:
        return
    prefixes = tuple(p.stem + "." for p in _cpu_kernel_files()) + OLD_PREFIXES
    for path in directory.iterdir() if directory.is_dir() else ():
        if path.name == STAMP_NAME or (path.name.startswith(prefixes) and path.suffix in (".nbi", ".nbc")):
            try:
                path.unlink()
            except OSError:
                pass


def install_locator() -> Path | None:
    """Make Numba cache the functions of ``kernels/cpu/`` in :func:`cache_dir` (call before importing
    ``kernels.cpu``: Numba picks a function's cache location when it is decorated). Returns the
    directory, or None when nothing is writable (then Numba compiles without caching).

    This adds a locator class at the front of Numba's list that only answers for files inside
    ``kernels/cpu/``; every other function keeps Numba's own rules. Its source stamp, which Numba
    stores in a function's cache index and compares before loading, is :func:`package_stamp`, one
    hash of the whole package: Numba's own (the function's file alone) would keep running a
    kernel compiled with the old value of a constant, or the old code of an inlined helper, that
    another file of the package changed. It uses Numba's (private but
    long-stable) ``_CacheLocator`` interface; if that ever moves, it returns None and Numba's
    defaults apply (they also honour NUMBA_CACHE_DIR and fall back to a per-user directory), and no
    stamp is written, so ``--device auto`` treats the kernels as not compiled.
    """
    global locator_installed
    directory, _ = cache_dir()
    try:
        from numba.core import caching
    except ImportError:  # pragma: no cover - only without numba
        return None
    base = getattr(caching, "_CacheLocator", None)
    mixin = getattr(caching, "_SourceFileBackedLocatorMixin", None)
    impl = getattr(caching, "CacheImpl", None) or getattr(caching, "_CacheImpl", None)  # (renamed in 0.6x)
    if base is None or mixin is None or impl is None or directory is None:
        return None
    if locator_installed:
        return directory

    class KernelsCacheLocator(mixin, base):
        """Numba cache locator for npshuffle's kernels: one directory, chosen by :func:`cache_dir`."""

        def __init__(self, py_func, py_file):
            self._py_file = py_file
            self._lineno = py_func.__code__.co_firstlineno
            self._cache_path = str(directory)

        def get_cache_path(self):
            return self._cache_path

        def get_source_stamp(self):
            return package_stamp()

        @classmethod
        def from_function(cls, py_func, py_file):
            if Path(py_file).resolve().parent != CPU_KERNELS_DIR:
                return None
            return super().from_function(py_func, py_file)

    impl._locator_classes.insert(0, KernelsCacheLocator)
    locator_installed = True
    return directory


# Set by install_locator: Numba caches the kernels where cache_dir() says (else where its own rules
# say, and a stamp there would describe a folder Numba does not use)
locator_installed = False
