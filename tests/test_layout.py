"""The layers stay layers: the engine is plain PyTorch, the analysis never imports training, and
no module imports itself back."""

from __future__ import annotations

import ast
import subprocess
import sys
from functools import cache
from pathlib import Path

import pytest

from hw3.tracking.schema import PROJECT_ROOT

PACKAGE = PROJECT_ROOT / "hw3"
# layer → what no module of it may import, directly or through other hw3 modules
FORBIDDEN = {
    "hw3.engine": ("hydra", "omegaconf", "mlflow", "hw3.tracking", "hw3.analysis"),
    "hw3.analysis": ("hw3.engine.train",),
}


def module_name(path: Path) -> str:
    """hw3/engine/train.py → hw3.engine.train; a package's __init__.py → the package."""
    parts = path.relative_to(PROJECT_ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def imports_of(path: Path) -> list[tuple[str, int]]:
    """(module, line) of every import statement in `path`, at any depth (relative ones resolved)."""
    package = module_name(path) if path.name == "__init__.py" else module_name(path.parent)
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found += [(alias.name, node.lineno) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, *([base] if base else [])])
            # `from hw3.engine import train` imports hw3.engine.train
            found += [(base, node.lineno)]
            found += [
                (f"{base}.{a.name}", node.lineno)
                for a in node.names
                if f"{base}.{a.name}" in MODULES
            ]
    return found


@cache
def reach(module: str) -> dict[str, tuple[str, ...]]:
    """Every module `module` imports, directly or through hw3 modules: name → import chain."""
    chains: dict[str, tuple[str, ...]] = {}
    todo = [(module, (module,))]
    while todo:
        current, chain = todo.pop()
        for imported, line in imports_of(MODULES[current]):
            if imported in chains:
                continue
            link = (*chain[:-1], f"{chain[-1]}:{line}", imported)
            chains[imported] = link
            if imported in MODULES:
                todo.append((imported, link))
    return chains


def violations(layer: str) -> list[str]:
    """One line per forbidden import reachable from a module of `layer`."""
    found = []
    for name in (m for m in MODULES if m == layer or m.startswith(f"{layer}.")):
        for imported, chain in reach(name).items():
            for banned in FORBIDDEN[layer]:
                if imported == banned or imported.startswith(f"{banned}."):
                    found.append(f"{' → '.join(chain)} (a {layer} module must not import {banned})")
    return sorted(found)


@pytest.mark.parametrize("layer", FORBIDDEN)
def test_layers_import_only_what_they_may(layer):
    found = violations(layer)
    assert not found, "\n".join(found)


def test_no_module_imports_itself_back_lazy_imports_included():
    circles = [" → ".join(reach(m)[m]) for m in MODULES if m in reach(m)]
    assert not circles, "\n".join(circles)


def test_the_check_sees_imports_at_any_depth(tmp_path, monkeypatch):
    # A stand-in engine module that imports mlflow inside a function, and one that reaches the
    # tracking layer through another engine module.
    fake = tmp_path / "hw3" / "engine"
    fake.mkdir(parents=True)
    (fake / "late.py").write_text("def f():\n    import mlflow.tracking\n")
    (fake / "relay.py").write_text("from . import hop\n")
    (fake / "hop.py").write_text("from hw3.tracking import store\n")
    modules = {f"hw3.engine.{name}": fake / f"{name}.py" for name in ("late", "relay", "hop")}
    monkeypatch.setattr(sys.modules[__name__], "MODULES", modules)
    monkeypatch.setattr(sys.modules[__name__], "PROJECT_ROOT", tmp_path)
    reach.cache_clear()
    try:
        found = violations("hw3.engine")
    finally:
        reach.cache_clear()
    assert any(line.startswith("hw3.engine.late:2 → mlflow.tracking") for line in found), found
    assert any("hw3.engine.relay:1 → hw3.engine.hop:1 → hw3.tracking" in line for line in found)


@pytest.mark.slow
def test_importing_the_engine_loads_neither_hydra_nor_mlflow():
    engine = [m for m in MODULES if m.startswith("hw3.engine")]
    code = (
        f"import sys; import {', '.join(engine)}; "
        "print(sorted({m.split('.')[0] for m in sys.modules} & {'hydra', 'omegaconf', 'mlflow'}))"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, cwd=PROJECT_ROOT, timeout=120
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.strip() == "[]"
