"""README and docs/: every command in their code blocks composes or exists, every link resolves."""

from __future__ import annotations

import os
import re
import shlex
from dataclasses import dataclass
from itertools import chain
from pathlib import Path

import pytest
from hydra.core.override_parser.overrides_parser import OverridesParser
from omegaconf import DictConfig, OmegaConf, open_dict, read_write

from hw3.analysis import config as analysis_config
from hw3.analysis import job as analysis_job
from hw3.tracking.schema import PROJECT_ROOT, validate

analysis_config.register()

PAGES = [PROJECT_ROOT / "README.md", *sorted((PROJECT_ROOT / "docs").glob("*.md"))]
ENTRY_POINTS = {"run.py": "config", "analyze.py": "analyze"}
FLAGS = {"-m": 0, "--multirun": 0, "--help": 0, "--cfg": 1}  # flag → how many values follow it


@dataclass(frozen=True)
class Command:
    """One command line of a code block, its words as the shell splits them."""

    page: str
    line: int
    words: tuple[str, ...]

    def __str__(self) -> str:
        return f"{self.page}:{self.line}: {shlex.join(self.words)}"


def code_lines(text: str) -> list[tuple[int, str]]:
    """(line number, line) of each line of a code block: fenced, or indented four spaces
    under a blank line or another such line (not a list item's continuation)."""
    found, fenced, in_block, blank = [], False, False, True
    for number, line in enumerate(text.splitlines(), 1):
        if line.lstrip().startswith("```"):
            fenced = not fenced
        elif fenced:
            found.append((number, line))
        else:
            in_block = line.startswith("    ") and (blank or in_block)
            if in_block:
                found.append((number, line))
        blank = not line.strip()
    return found


def commands(path: Path) -> list[Command]:
    """The commands in `path`'s code blocks (lines that start `python`, `bash`, `sudo` or
    `scripts/`): `$ ` prompts dropped, `\\` continuations joined, comments and `&` left out."""
    found, pending = [], None
    for number, line in code_lines(path.read_text()):
        text = line.strip().removeprefix("$ ")
        if pending is not None:
            (number, head), pending = pending, None
            text = f"{head} {text}"
        elif not re.match(r"(python|bash|sudo) |scripts/\w", text):
            continue
        if text.endswith("\\"):
            pending = (number, text[:-1])
            continue
        words = [w for w in shlex.split(text, comments=True) if w != "&"]
        found.append(Command(str(path.relative_to(PROJECT_ROOT)), number, tuple(words)))
    return found


ALL = list(chain.from_iterable(commands(p) for p in PAGES))
HYDRA = [c for c in ALL if c.words[:1] == ("python",) and c.words[1] in ENTRY_POINTS]
FILES = [
    c
    for c in ALL
    if c not in HYDRA
    and re.match(r"(sudo )?(bash |python )?(scripts|benchmarks)/", " ".join(c.words))
]


def overrides_and_flags(words: tuple[str, ...]) -> tuple[list[str], set[str]]:
    """A command's overrides, and its flags."""
    overrides, flags, skip = [], set(), 0
    for word in words:
        if skip:
            skip -= 1
        elif word in FLAGS:
            flags.add(word)
            skip = FLAGS[word]
        else:
            overrides.append(word)
    return overrides, flags


def jobs(overrides: list[str]) -> list[list[str]]:
    """The jobs of a sweep, enough of them that every value of every swept key is composed:
    job i takes value i of each swept key (its last value once it has no more)."""
    parsed = OverridesParser.create().parse_overrides(overrides)
    values = [
        [f"{o.get_key_element()}={v}" for v in o.sweep_string_iterator()]
        if o.is_sweep_override()
        else [text]
        for o, text in zip(parsed, overrides, strict=True)
    ]
    return [[v[min(i, len(v) - 1)] for v in values] for i in range(max(map(len, values)))]


def checked(cfg: DictConfig, config_name: str) -> None:
    """What the entry point does with its config before it starts: types, then ranges."""
    job = cfg.copy()
    with read_write(job), open_dict(job):
        del job["hydra"]
    obj = OmegaConf.to_object(job)
    validate(obj)
    if config_name == "analyze":
        analysis_job.settings(obj)


def test_the_pages_hold_the_commands_a_newcomer_needs():
    lines = {shlex.join(c.words) for c in ALL}
    for needed in (
        "scripts/demo",
        "scripts/test",
        "python run.py -m experiment=batchnorm",
        "python run.py -m experiment=stride",
        "python analyze.py experiment=batchnorm",
        "python analyze.py experiment=stride",
    ):
        assert needed in lines
    assert {c.page for c in HYDRA} >= {"README.md", "docs/analysis.md", "docs/scaling-out.md"}


@pytest.mark.parametrize("command", HYDRA, ids=str)
def test_each_command_composes(command, compose_config):
    script, words = command.words[1], command.words[2:]
    config_name = ENTRY_POINTS[script]
    overrides, flags = overrides_and_flags(words)
    assert not flags - FLAGS.keys()
    sweep = bool(flags & {"-m", "--multirun"})
    grid = jobs(overrides) if sweep else [overrides]
    for job in grid:
        cfg = compose_config(*job, config_name=config_name, hydra=True)
        checked(cfg, config_name)
        params = cfg.hydra.sweeper.params if sweep else None
        for preset_job in jobs([f"{k}={v}" for k, v in params.items()]) if params else []:
            given = {o.split("=", 1)[0] for o in job}  # the command line wins over a preset grid
            extra = [o for o in preset_job if o.split("=", 1)[0] not in given]
            checked(compose_config(*job, *extra, config_name=config_name, hydra=True), config_name)


@pytest.mark.parametrize("command", FILES, ids=str)
def test_each_script_exists_and_takes_its_options(command):
    words = [w for w in command.words if w not in ("sudo", "bash", "python")]
    path = PROJECT_ROOT / words[0]
    assert path.is_file(), f"{command}: no file {words[0]}"
    if command.words[0] == "python":  # argparse: each --option is spelled out in the script
        text = path.read_text()
        assert all(f'"{w}"' in text for w in words[1:] if w.startswith("--")), str(command)
    elif command.words[0] != "bash":
        assert os.access(path, os.X_OK), f"{command}: {words[0]} is not executable"


def anchor(heading: str) -> str:
    """GitHub's anchor of a heading: lower case, punctuation dropped, spaces as hyphens."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def links(path: Path) -> list[tuple[str, str]]:
    """(target, anchor) of each relative link or image of a page (outside code spans)."""
    text = re.sub(r"`[^`]*`", "", path.read_text())
    found = re.findall(r"\]\(([^)\s]+)\)", text)
    return [tuple(t.partition("#")[::2]) for t in found if not re.match(r"\w+:", t)]


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(PROJECT_ROOT)))
def test_each_link_resolves(page):
    for target, fragment in links(page):
        path = (page.parent / target).resolve() if target else page
        assert path.exists(), f"{page.name}: no {target}"
        if fragment:
            headings = re.findall(r"^#+ (.+)$", path.read_text(), flags=re.MULTILINE)
            assert fragment in {anchor(h) for h in headings}, f"{page.name}: no #{fragment}"


def test_readme_links_every_docs_page():
    linked = {(PROJECT_ROOT / t).resolve() for t, _ in links(PROJECT_ROOT / "README.md")}
    assert set(PAGES[1:]) <= linked
