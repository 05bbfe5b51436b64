"""The import rules between npshuffle's runtime, its training tools, kernels and weights_convert.

Read from the source with ``ast`` (every import, at module level and inside functions, relative
ones resolved), so a rule breaks here, by file and line, before it shows as a slow start or an
import cycle somewhere else:

(a) the runtime (npshuffle, except npshuffle/training/) never imports torch (but the lab, inside
    the functions that time its torch eager twins, when asked to); it names
    npshuffle.training (an import, or a module name for importlib) only in cli.py, and imports
    weights_convert only inside cli.py's ``convert`` command, never at module level;
(b) kernels imports nothing from npshuffle or weights_convert;
(c) weights_convert imports from npshuffle only its architecture tables (npshuffle.archs and the
    npshuffle.plan it builds) and the safetensors format reader (npshuffle.safetensors_file, which
    imports only NumPy, npshuffle.atomic and npshuffle.strict_json: the converter reads checkpoints
    with it and the model file loader model files, so it lives in the package both may import), and
    npshuffle.strict_json (JSON that refuses a key given twice, for config.json and class names), except
    weights_convert/write.py, the layer that writes the model file, which uses npshuffle.model_file too;
(d) the module-level imports of the three packages have no cycle;
(e) the runtime uses none of kernels.reference's test-only definitions (softmax, the unfolded
    batch_norm), and npshuffle.predict imports no kernels at all;
and ``npshuffle eval``'s module (and the data sets') imports no torch.

And, run for real: ``npshuffle.predict`` on the numpy backend loads neither torch nor the training
tools nor the converter.
"""

from __future__ import annotations

import ast
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from kernels import reference
from npshuffle.predict import softmax as runtime_softmax

REPO = Path(__file__).resolve().parent.parent
PACKAGES = ("npshuffle", "kernels", "weights_convert")
TULIP = str(REPO / "examples" / "tulip.jpg")

RUNTIME_MAY_NAME_TRAINING = {"npshuffle.cli"}  # its train and eval commands load it when asked
RUNTIME_MAY_IMPORT_TORCH_INSIDE = {"npshuffle.lab"}  # `npshuffle lab`'s torch eager column, in its functions
RUNTIME_CONVERT_COMMAND = ("npshuffle.cli", "cmd_convert")  # the one place the runtime imports weights_convert
WEIGHTS_CONVERT_MAY_IMPORT = {"npshuffle.archs", "npshuffle.plan", "npshuffle.safetensors_file",
                              "npshuffle.strict_json"}
MODEL_FILE_WRITER = "weights_convert.write"  # ... and this module npshuffle.model_file too
TEST_ONLY_REFERENCE = {"softmax", "batch_norm"}  # kernels.reference definitions the runtime must not use


@dataclass(frozen=True)
class Import:
    module: str  # the importing module
    target: str  # the module imported (absolute; `from a import b` is a.b when b is a module)
    line: int
    function: str | None  # the enclosing function, None at module level (class bodies included)

    def where(self) -> str:
        return f"{self.module}:{self.line}" + (f" (in {self.function})" if self.function else "")


def module_files() -> dict[str, Path]:
    """Every module of the three packages: dotted name -> file."""
    modules = {}
    for package in PACKAGES:
        for path in sorted((REPO / package).rglob("*.py")):
            parts = list(path.relative_to(REPO).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            modules[".".join(parts)] = path
    return modules


MODULES = module_files()


def is_package(module: str) -> bool:
    return MODULES[module].name == "__init__.py"


def resolve(module: str, level: int, name: str | None) -> str:
    """The absolute module of ``from <level dots><name> import ...`` written in ``module``."""
    if level == 0:
        return name or ""
    package = module.split(".") if is_package(module) else module.split(".")[:-1]
    base = package[: len(package) - (level - 1)]
    return ".".join(base + ([name] if name else []))


def _type_checking_only(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


class _ImportVisitor(ast.NodeVisitor):
    def __init__(self, module: str):
        self.module, self.functions, self.found = module, [], []

    def _add(self, target: str, node: ast.AST) -> None:
        function = self.functions[-1] if self.functions else None
        self.found.append(Import(self.module, target, node.lineno, function))

    def visit_FunctionDef(self, node) -> None:
        self.functions.append(node.name)
        self.generic_visit(node)
        self.functions.pop()

    visit_AsyncFunctionDef = visit_FunctionDef

    def visit_Lambda(self, node) -> None:
        self.functions.append("<lambda>")
        self.generic_visit(node)
        self.functions.pop()

    def visit_If(self, node: ast.If) -> None:
        if not _type_checking_only(node):  # annotations only: never imported at run time
            self.generic_visit(node)
        else:
            for child in node.orelse:
                self.visit(child)

    def visit_Import(self, node: ast.Import) -> None:
        for alias in node.names:
            self._add(alias.name, node)

    def visit_ImportFrom(self, node: ast.ImportFrom) -> None:
        base = resolve(self.module, node.level, node.module)
        for alias in node.names:
            submodule = f"{base}.{alias.name}"
            self._add(submodule if submodule in MODULES else base, node)


def parse(module: str) -> ast.Module:
    return ast.parse(MODULES[module].read_text(encoding="utf-8"), filename=str(MODULES[module]))


def imports_of(module: str) -> list[Import]:
    visitor = _ImportVisitor(module)
    visitor.visit(parse(module))
    return visitor.found


IMPORTS = {module: imports_of(module) for module in MODULES}


def within(target: str, package: str) -> bool:
    return target == package or target.startswith(package + ".")


def runtime_modules() -> list[str]:
    return [m for m in MODULES if within(m, "npshuffle") and not within(m, "npshuffle.training")]


def broken(rule: str, imports: list[Import]) -> str:
    return rule + ":\n" + "\n".join(f"  {i.where()} imports {i.target}" for i in imports)


# --------------------------------------------------------------------------------------------------


def test_the_walker_sees_the_imports_it_checks():
    """(A rule checked over nothing would pass: the walker must find what is known to be there.)"""
    assert len(MODULES) > 30 and "npshuffle.training.train" in MODULES and "weights_convert.write" in MODULES
    cli = IMPORTS["npshuffle.cli"]
    assert any(i.target == "weights_convert" and i.function == "cmd_convert" for i in cli)
    assert any(i.target == "npshuffle.model_file" and i.function is None for i in cli)  # `from .model_file`
    assert any(i.target == "npshuffle.archs" and i.function is None for i in IMPORTS["weights_convert.convert"])
    assert any(i.target == "weights_convert.megvii" for i in IMPORTS["weights_convert.convert"])  # `from . import`
    assert any(i.target == "npshuffle.archs" for i in IMPORTS["npshuffle.training.torch_ref"])  # `from ..archs`
    assert any(i.target == "torch" for i in IMPORTS["npshuffle.training.loop"])


def test_the_runtime_never_imports_torch():
    bad = [i for m in runtime_modules() for i in IMPORTS[m] if within(i.target, "torch")
           and (i.function is None or m not in RUNTIME_MAY_IMPORT_TORCH_INSIDE)]
    assert not bad, broken("the inference runtime imports torch (only npshuffle.training may)", bad)


def test_the_runtime_loads_the_training_tools_only_from_the_cli():
    bad = [i for m in runtime_modules() for i in IMPORTS[m] if within(i.target, "npshuffle.training")
           and (i.function is None or m not in RUNTIME_MAY_NAME_TRAINING)]
    assert not bad, broken("the runtime imports npshuffle.training (only cli.py may, inside a command)", bad)
    # the CLI names them for importlib (loaded inside the train/eval commands); no other module does
    named = {m for m in runtime_modules() for node in ast.walk(parse(m)) if isinstance(node, ast.Constant)
             and isinstance(node.value, str) and re.fullmatch(r"npshuffle\.training(\.\w+)*", node.value)}
    assert named <= RUNTIME_MAY_NAME_TRAINING, f"modules naming npshuffle.training: {sorted(named)}"


def test_the_runtime_imports_the_converter_only_in_the_convert_command():
    module, function = RUNTIME_CONVERT_COMMAND
    bad = [i for m in runtime_modules() for i in IMPORTS[m] if within(i.target, "weights_convert")
           and (i.module, i.function) != (module, function)]
    assert not bad, broken(f"the runtime imports weights_convert outside {module}.{function}", bad)


def test_kernels_import_nothing_of_npshuffle_or_the_converter():
    bad = [i for m in MODULES if within(m, "kernels") for i in IMPORTS[m]
           if within(i.target, "npshuffle") or within(i.target, "weights_convert")]
    assert not bad, broken("kernels imports npshuffle or weights_convert", bad)


def test_the_converter_uses_only_npshuffles_architecture_tables():
    bad = [i for m in MODULES if within(m, "weights_convert") for i in IMPORTS[m] if within(i.target, "npshuffle")
           and i.target not in WEIGHTS_CONVERT_MAY_IMPORT
           and not (m == MODEL_FILE_WRITER and i.target == "npshuffle.model_file")]
    assert not bad, broken(f"weights_convert imports from npshuffle more than {sorted(WEIGHTS_CONVERT_MAY_IMPORT)} "
                           f"(and {MODEL_FILE_WRITER}: npshuffle.model_file)", bad)


def module_level_graph() -> dict[str, set[str]]:
    """Module -> the modules importing it runs at once: its module-level imports and, for an import
    from another package, that package's ``__init__`` (and its parents') too."""
    graph: dict[str, set[str]] = {m: set() for m in MODULES}
    for module, imports in IMPORTS.items():
        own_packages = {".".join(module.split(".")[:k]) for k in range(1, module.count(".") + 1)}
        for i in imports:
            if i.function is not None or i.target not in MODULES:
                continue
            parts = i.target.split(".")
            packages = {".".join(parts[:k]) for k in range(1, len(parts))} - own_packages
            graph[module] |= ({i.target} | packages) - {module}
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle of ``graph`` as [a, b, ..., a], or None."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                return path[path.index(nxt):] + [nxt]
            if nxt not in state and (cycle := visit(nxt)):
                return cycle
        path.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (cycle := visit(node)):
            return cycle
    return None


def test_no_import_cycle_at_module_level():
    cycle = find_cycle(module_level_graph())
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


def test_find_cycle_finds_one():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set(), "c": {"a", "b"}}) is None


def test_eval_and_the_data_sets_need_no_torch():
    """``npshuffle eval`` runs on the engine: what importing its module runs imports no torch."""
    graph, seen, todo = module_level_graph(), set(), ["npshuffle.training.evaluate", "npshuffle.training.datasets"]
    while todo:
        module = todo.pop()
        if module not in seen:
            seen.add(module)
            todo += graph[module]
    bad = [i for m in sorted(seen) for i in IMPORTS[m] if i.function is None and within(i.target, "torch")]
    assert not bad, broken("importing npshuffle.training.evaluate imports torch", bad)
    assert "npshuffle.predict" in seen and "npshuffle.training.loop" not in seen


def test_the_runtime_uses_no_test_only_reference_code():
    bad = []
    for module in runtime_modules():
        tree = parse(module)
        aliases = set()  # names bound to kernels.reference in this module
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and resolve(module, node.level, node.module) == "kernels.reference":
                bad += [f"{module}:{node.lineno} imports kernels.reference.{a.name}"
                        for a in node.names if a.name in TEST_ONLY_REFERENCE]
            elif isinstance(node, ast.ImportFrom) and node.module == "kernels":
                aliases |= {a.asname or a.name for a in node.names if a.name == "reference"}
            elif isinstance(node, ast.Import):
                aliases |= {a.asname for a in node.names if a.name == "kernels.reference" and a.asname}
        bad += [f"{module}:{node.lineno} uses {node.value.id}.{node.attr}" for node in ast.walk(tree)
                if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name)
                and node.value.id in aliases and node.attr in TEST_ONLY_REFERENCE]
    assert not bad, "the runtime uses the test oracle's own definitions:\n  " + "\n  ".join(bad)
    kernels_in_predict = [i for i in IMPORTS["npshuffle.predict"] if within(i.target, "kernels")]
    assert not kernels_in_predict, broken("npshuffle.predict imports kernels", kernels_in_predict)


@pytest.mark.parametrize("shape, axis", [((1, 5), 1), ((4, 1000), 1), ((3, 7), 0), ((6,), -1)])
@pytest.mark.parametrize("scale", [1.0, 30.0, 1e4])
def test_the_runtime_softmax_is_the_references(shape, axis, scale):
    rng = np.random.default_rng(len(shape) * 1000 + shape[-1])
    logits = rng.standard_normal(shape) * scale
    for x in (logits, logits.astype(np.float32)):
        ours, oracle = runtime_softmax(x, axis=axis), reference.softmax(x, axis=axis)
        assert ours.dtype == oracle.dtype == np.float32
        np.testing.assert_array_equal(ours, oracle)
    odd = np.array([[0.0, np.inf, 1.0], [-np.inf, 0.0, 0.0], [np.nan, 0.0, 0.0], [3e38, 3e38, -3e38]])
    with np.errstate(all="ignore"):  # (non-finite scores: predict reports those rows as errors)
        np.testing.assert_array_equal(runtime_softmax(odd, axis=1), reference.softmax(odd, axis=1))


LOADED = "import sys; print([m for m in ('torch', 'npshuffle.training', 'weights_convert') if m in sys.modules])"


def run_python(code: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, timeout=300)


def test_predict_loads_neither_torch_nor_training_nor_the_converter():
    out = run_python(f"import npshuffle; print(npshuffle.predict({TULIP!r}, backend='numpy').label); {LOADED}")
    assert out.returncode == 0, out.stderr
    assert out.stdout.split("\n")[:2] == ["tulips", "[]"], out.stdout


def test_the_predict_and_list_commands_load_none_of_them_either():
    code = ("from npshuffle.cli import main; "
            f"assert main(['predict', {TULIP!r}, '--device', 'numpy', '-k', '1']) == 0; "
            f"assert main(['list']) == 0; {LOADED}")
    out = run_python(code)
    assert out.returncode == 0, out.stderr
    assert out.stdout.rstrip().split("\n")[-1] == "[]", out.stdout
