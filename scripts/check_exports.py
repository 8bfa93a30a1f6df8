"""Check that peerload/__init__.py's eager imports, lazy `_LAZY` map, TYPE_CHECKING imports and
`__all__` agree, and that every lazy name exists in its module. Exit 1 naming each disagreement."""

from __future__ import annotations

import ast
import importlib
import sys
from pathlib import Path

INIT = Path(__file__).resolve().parents[1] / "src" / "peerload" / "__init__.py"


def _is_type_checking(node: ast.If) -> bool:
    return isinstance(node.test, ast.Name) and node.test.id == "TYPE_CHECKING"


def _imported(nodes: list[ast.stmt]) -> dict[str, str]:
    """name -> module for every `from peerload... import name` among `nodes`."""
    return {
        alias.asname or alias.name: node.module or ""
        for node in nodes
        if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("peerload")
        for alias in node.names
    }


def problems(tree: ast.Module) -> list[str]:
    eager = _imported(tree.body)
    typing_only: dict[str, str] = {}
    lazy: dict[str, str] = {}
    exported: list[str] = []
    for node in tree.body:
        if isinstance(node, ast.If) and _is_type_checking(node):
            typing_only.update(_imported(node.body))
        elif isinstance(node, ast.Assign) and isinstance(node.targets[0], ast.Name):
            if node.targets[0].id == "_LAZY":
                lazy = ast.literal_eval(node.value)
            elif node.targets[0].id == "__all__":
                exported = ast.literal_eval(node.value)
    found = []
    if set(exported) != set(eager) | set(lazy):
        found.append(
            f"__all__ lacks {sorted(set(eager) | set(lazy) - set(exported))} and has extra "
            f"{sorted(set(exported) - set(eager) - set(lazy))}"
        )
    if typing_only != lazy:
        found.append(f"TYPE_CHECKING imports {typing_only} differ from _LAZY {lazy}")
    if len(exported) != len(set(exported)):
        found.append("__all__ lists a name twice")
    for name, module in lazy.items():
        if not hasattr(importlib.import_module(module), name):
            found.append(f"_LAZY[{name!r}]: {module} has no attribute {name}")
    return found


def main() -> int:
    found = problems(ast.parse(INIT.read_text()))
    for problem in found:
        print(f"{INIT}: {problem}", file=sys.stderr)
    return 1 if found else 0


if __name__ == "__main__":
    sys.exit(main())
