"""The shape of src/ (docs/ARCHITECTURE.md): layers whose imports point only downward, no
import circle, no file over 700 lines, no class over 300 lines.

Imports are read with ``ast`` from every module of src/, wherever they stand (module level,
inside a function, under ``TYPE_CHECKING``): a lazy import is still an arrow. A module of
src/ that no layer names fails the test, so a new module is placed on purpose.
"""

from __future__ import annotations

import ast
from collections.abc import Iterable, Mapping
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[2] / "src"

MAX_FILE_LINES = 700
MAX_CLASS_LINES = 300

# Top to bottom. A module may import its own layer and the layers below it, never above.
# A name ending in ".*" is a package: the package and every module in it.
LAYERS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("doors", ("handler", "openai_door", "local_run")),
    ("job runner", ("jobs",)),
    ("predict", ("predict", "transcript", "openai_shapes", "debug_info", "job_diarization", "job_state", "model_policy")),
    ("resident", ("resident.*",)),
    # Settings build the stages' policy objects (``fetch.FetchPolicy``) from ENV, so they sit
    # just above the stages; no stage reads ENV or imports the settings.
    ("settings", ("settings",)),
    ("stages", ("stages.*",)),
    ("bottom", ("rp_schema", "request_rules", "scalar_text", "safe_values", "result_store", "job_control", "model_cache", "languages", "logs")),
)


def module_name(path: Path, root: Path) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def read_modules(root: Path) -> dict[str, Path]:
    return {module_name(path, root): path for path in sorted(root.rglob("*.py"))}


def layer_of(module: str, layers: Iterable[tuple[str, tuple[str, ...]]] = LAYERS) -> int | None:
    for index, (_, members) in enumerate(layers):
        for member in members:
            if member.endswith(".*"):
                package = member[:-2]
                if module == package or module.startswith(package + "."):
                    return index
            elif module == member:
                return index
    return None


def imports_of(module: str, path: Path, known: Mapping[str, Path]) -> set[str]:
    """The modules of src/ that ``module`` imports (any import statement in the file)."""
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".") if package else []
                anchor = anchor[: len(anchor) - (node.level - 1)]
                base = ".".join([*anchor, *([base] if base else [])])
            # ``from stages import asr`` imports the module stages.asr; ``from stages.asr
            # import X`` imports stages.asr.
            names = [f"{base}.{alias.name}" if f"{base}.{alias.name}" in known else base for alias in node.names]
        else:
            continue
        for name in names:
            # ``import a.b.c`` also runs a and a.b: the deepest module of src/ named counts.
            while name and name not in known:
                name = name.rpartition(".")[0]
            if name and name != module:
                found.add(name)
    return found


def import_graph(root: Path) -> dict[str, set[str]]:
    known = read_modules(root)
    return {module: imports_of(module, path, known) for module, path in known.items()}


def circles(graph: Mapping[str, set[str]]) -> list[list[str]]:
    """Strongly connected groups of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in sorted(graph.get(node, ())):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            group = []
            while True:
                top = stack.pop()
                on_stack.discard(top)
                group.append(top)
                if top == node:
                    break
            if len(group) > 1:
                found.append(sorted(group))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def upward_imports(graph: Mapping[str, set[str]], layers: tuple[tuple[str, tuple[str, ...]], ...] = LAYERS) -> list[str]:
    found = []
    for module, imported in sorted(graph.items()):
        own = layer_of(module, layers)
        for target in sorted(imported):
            theirs = layer_of(target, layers)
            if own is not None and theirs is not None and theirs < own:
                found.append(f"{module} ({layers[own][0]}) imports {target} ({layers[theirs][0]})")
    return found


def long_files(root: Path) -> list[str]:
    return [f"{path.relative_to(root)}: {n} lines" for path in sorted(root.rglob("*.py"))
            if (n := len(path.read_text().splitlines())) > MAX_FILE_LINES]


def long_classes(root: Path) -> list[str]:
    found = []
    for path in sorted(root.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.ClassDef) and (n := (node.end_lineno or node.lineno) - node.lineno + 1) > MAX_CLASS_LINES:
                found.append(f"{path.relative_to(root)}: class {node.name}: {n} lines")
    return found


# ---------------------------------------------------------------------------- src/ itself
def test_every_module_has_a_layer():
    assert [m for m in read_modules(SRC) if layer_of(m) is None] == []


def test_imports_point_only_downward():
    assert upward_imports(import_graph(SRC)) == []


def test_no_import_circle():
    assert circles(import_graph(SRC)) == []


def test_no_file_over_the_limit():
    assert long_files(SRC) == []


def test_no_class_over_the_limit():
    assert long_classes(SRC) == []


def test_the_design_card_names_stay():
    source = (SRC / "predict.py").read_text()
    assert "class Predictor" in source
    for name in ("handler.py", "rp_schema.py", "predict.py", "local_run.py", "stages/__init__.py", "resident/__init__.py"):
        assert (SRC / name).is_file(), name


# ---------------------------------------------------------------------------- the checks fail when they should
def _tree(tmp_path: Path, files: Mapping[str, str]) -> Path:
    for name, text in files.items():
        path = tmp_path / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return tmp_path


def test_a_circle_is_found(tmp_path):
    root = _tree(tmp_path, {"a.py": "import b\n", "b.py": "def f():\n    from a import x\n", "c.py": "import a\n"})
    assert circles(import_graph(root)) == [["a", "b"]]


def test_an_upward_import_is_found(tmp_path):
    root = _tree(tmp_path, {
        "predict.py": "from stages import asr\n",
        "stages/__init__.py": "",
        "stages/asr.py": "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    import predict\n",
    })
    layers = (("predict", ("predict",)), ("stages", ("stages.*",)))
    graph = import_graph(root)
    assert graph["predict"] == {"stages.asr"}
    assert upward_imports(graph, layers) == ["stages.asr (stages) imports predict (predict)"]


@pytest.mark.parametrize(("lines", "too_long"), [(MAX_FILE_LINES, False), (MAX_FILE_LINES + 1, True)])
def test_a_long_file_is_found(tmp_path, lines, too_long):
    root = _tree(tmp_path, {"big.py": "x = 1\n" * lines})
    assert bool(long_files(root)) is too_long


@pytest.mark.parametrize(("lines", "too_long"), [(MAX_CLASS_LINES, False), (MAX_CLASS_LINES + 1, True)])
def test_a_long_class_is_found(tmp_path, lines, too_long):
    root = _tree(tmp_path, {"big.py": "class Big:\n" + "    x = 1\n" * (lines - 1)})
    assert bool(long_classes(root)) is too_long
