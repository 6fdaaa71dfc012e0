"""whisperX's constant tables (default aligners per language, languages without spaces), read
from its source instead of imported.

``import whisperx.alignment`` pulls in transformers' model, generation and processor stacks
(scikit-learn, torch._dynamo, torchvision): 10.9 s on the H200's host before anything else ran
(docs/BENCHMARKS.md section 16, cold-start profile). The worker needs only a few literal tables
from that module on the path to "ready" and to a job's first alignment, so it parses them out
of the installed file: whisperX stays the source of truth, and nothing of it runs.
"""

from __future__ import annotations

import ast
import functools
import importlib.util
from pathlib import Path
from typing import Any

__all__ = ["constant"]


@functools.cache
def _assignments(module: str) -> dict[str, ast.expr]:
    """Top-level ``NAME = <expr>`` assignments of ``whisperx.<module>``'s source."""
    spec = importlib.util.find_spec("whisperx")
    if spec is None or not spec.submodule_search_locations:
        raise ModuleNotFoundError("whisperx is not installed")
    source = Path(next(iter(spec.submodule_search_locations))) / f"{module}.py"
    tree = ast.parse(source.read_text(encoding="utf-8"), filename=str(source))
    found: dict[str, ast.expr] = {}
    for node in tree.body:
        if isinstance(node, ast.Assign) and len(node.targets) == 1 and isinstance(node.targets[0], ast.Name):
            found[node.targets[0].id] = node.value
        elif isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name) and node.value is not None:
            found[node.target.id] = node.value
    return found


@functools.cache
def constant(module: str, name: str) -> Any:
    """The literal value of ``whisperx.<module>.<name>`` (a dict, list, string or number).

    Raises ``KeyError`` if the module has no such top-level assignment and ``ValueError`` if
    its value is not a plain literal (whisperX changed it into code: import it instead)."""
    return ast.literal_eval(_assignments(module)[name])
