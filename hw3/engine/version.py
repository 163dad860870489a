"""The engine's version: a hash of the code that determines results, blind to comments and docs."""

from __future__ import annotations

import ast
import hashlib
from functools import cache
from pathlib import Path

ENGINE_DIR = Path(__file__).resolve().parent


def _without_docstrings(tree: ast.AST) -> ast.AST:
    """`tree` with the docstring of every module, class and function removed."""
    for node in ast.walk(tree):
        body = getattr(node, "body", None)
        if (
            isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef)
            and body
            and isinstance(body[0], ast.Expr)
            and isinstance(body[0].value, ast.Constant)
            and isinstance(body[0].value.value, str)
        ):
            node.body = body[1:] or [ast.Pass()]
    return tree


def source_digest(files: list[Path]) -> str:
    """A short hash of the code in `files`: their syntax trees without docstrings, by name."""
    digest = hashlib.sha256()
    for path in sorted(files, key=lambda p: p.name):
        tree = _without_docstrings(ast.parse(path.read_text(), str(path)))
        digest.update(f"{path.name}\0{ast.dump(tree)}\0".encode())
    return digest.hexdigest()[:12]


@cache
def engine_version() -> str:
    """The version of the code in hw3/engine/: changes with the code, not with its comments."""
    return source_digest(list(ENGINE_DIR.glob("*.py")))
