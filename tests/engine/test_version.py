"""The engine's version follows its code and nothing else: not comments, docstrings, layout."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from hw3.engine.version import ENGINE_DIR, engine_version, source_digest

CODE = '''"""A module."""

import torch


def f(x: torch.Tensor) -> torch.Tensor:
    """Twice x."""
    return 2 * x
'''


@pytest.fixture
def module(tmp_path: Path) -> Path:
    path = tmp_path / "m.py"
    path.write_text(CODE)
    return path


@pytest.mark.parametrize(
    "edit",
    [
        lambda s: s.replace('"""Twice x."""', '"""Doubles x, reworded."""'),
        lambda s: s.replace('"""A module."""\n', ""),
        lambda s: s.replace("    return 2 * x", "    # the factor\n    return 2 * x  # scaled"),
        lambda s: s.replace('    """Twice x."""\n', ""),
        lambda s: s.replace("return 2 * x", "return (\n        2 * x\n    )") + "\n\n",
    ],
    ids=["docstring", "module docstring", "comments", "removed docstring", "layout"],
)
def test_words_and_layout_leave_the_version_alone(module: Path, edit):
    before = source_digest([module])
    module.write_text(edit(CODE))
    assert source_digest([module]) == before


@pytest.mark.parametrize(
    "edit",
    [
        lambda s: s.replace("2 * x", "3 * x"),
        lambda s: s.replace("2 * x", "x * 2"),
        lambda s: s + "\nEPS = 1e-8\n",
    ],
    ids=["constant", "operand order", "new statement"],
)
def test_code_changes_change_the_version(module: Path, edit):
    before = source_digest([module])
    module.write_text(edit(CODE))
    assert source_digest([module]) != before


def test_the_version_covers_every_engine_module(tmp_path: Path):
    copy = tmp_path / "engine"
    shutil.copytree(ENGINE_DIR, copy, ignore=shutil.ignore_patterns("__pycache__"))
    assert source_digest(list(copy.glob("*.py"))) == engine_version()
    for path in sorted(copy.glob("*.py")):
        text = path.read_text()
        path.write_text(text + "\n_ = 0\n")
        assert source_digest(list(copy.glob("*.py"))) != engine_version(), path.name
        path.write_text(text)
    (copy / "new.py").write_text("X = 1\n")
    assert source_digest(list(copy.glob("*.py"))) != engine_version()
