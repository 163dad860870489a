"""README and docs/: every command in their code blocks composes or exists, every link resolves."""

from __future__ import annotations

import ast
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


USER_PAGES = [*PAGES, PROJECT_ROOT / "benchmarks" / "README.md"]
# Words about how a page was made, not for its reader: issue and pull-request numbers, the
# history of a change, the session or the tool that wrote or measured it.
NOT_FOR_READERS = [
    r"\bissues? #?\d+",
    r"\b(pull request|PR) #?\d+",
    r"\bwhen it was filed\b",
    r"\bwas filed\b",
    r"\b(before|after) (this|these|the) changes?\b",
    r"\bthis change\b",
    r"\bthe issue\b",
    r"\bthis session\b",
    r"\bthe session that\b",
    r"\bdevice tool\b",
    r"\bfiles_at\b",
    r"\brun\(command=",
    r"\bcarry=",
    r"\btimeout_s\b",
]


def prose(text: str) -> str:
    """A page without its code blocks and code spans."""
    numbers = {number for number, _ in code_lines(text)}
    lines = [line for n, line in enumerate(text.splitlines(), 1) if n not in numbers]
    return re.sub(r"`[^`]*`", "", "\n".join(lines))


@pytest.mark.parametrize("page", USER_PAGES, ids=lambda p: str(p.relative_to(PROJECT_ROOT)))
def test_pages_speak_to_users(page):
    text = page.read_text()
    for pattern in NOT_FOR_READERS:
        found = [m.group(0) for m in re.finditer(pattern, text, flags=re.IGNORECASE)]
        assert not found, f"{page.name}: {found} tells how the page was made, not the reader"
    numbers = re.findall(r"(?<![\w&/\[])#\d+\b", prose(text))  # a number like an issue's
    assert not numbers, f"{page.name}: {numbers}"
    for target in re.findall(r"(?<![\w.])((?:\.\./)+[^\s`)\]'\"]*)", text):
        path = (page.parent / target).resolve()
        assert path.is_relative_to(PROJECT_ROOT), f"{page.name}: {target} is outside the repository"


CONFIGURATION = PROJECT_ROOT / "docs" / "configuration.md"
# Where the code reads the environment: Python (os.environ / os.getenv) and the shell scripts
# (a variable read with a default, ${NAME:-…}, is one a user may set).
PYTHON_SOURCES = ["hw3", "run.py", "analyze.py", "hydra_plugins", "benchmarks", "tests"]
SHELL_SOURCES = ["scripts", "benchmarks", ".ci"]
SYSTEM = {"PATH"}  # the shell's own, passed on to subprocesses


def section(text: str, heading: str) -> str:
    """The text under `heading` (a Markdown heading line), up to the next heading."""
    body = text.split(f"\n{heading}\n", 1)[1]
    return re.split(r"\n#+ ", body, maxsplit=1)[0]


def first_column(text: str) -> set[str]:
    """The names in backticks in the first cell of each table row."""
    cells = re.findall(r"^\| ([^|]*(?:\\\|[^|]*)*) \|", text, flags=re.MULTILINE)
    return {name for cell in cells for name in re.findall(r"`([^`]+)`", cell)}


def leaves(node: object, prefix: str = "") -> set[str]:
    """The dotted keys of a config's leaves (a non-empty mapping is not a leaf)."""
    if isinstance(node, dict) and node:
        return set().union(*(leaves(v, f"{prefix}{k}.") for k, v in node.items()))
    return {prefix.removesuffix(".")}


def config_keys(compose_config, config_name: str) -> set[str]:
    """Every key of a composed config; run.py's over every model, whose options add keys."""
    if config_name == "analyze":
        return leaves(OmegaConf.to_container(compose_config(config_name=config_name)))
    keys = set()
    for model in sorted(p.stem for p in (PROJECT_ROOT / "conf" / "model").glob("*.yaml")):
        keys |= leaves(OmegaConf.to_container(compose_config(f"model={model}")))
    return keys


def environment_reads() -> set[str]:
    """The environment variables the code reads."""
    names = set()
    files = chain.from_iterable(
        [PROJECT_ROOT / s] if s.endswith(".py") else (PROJECT_ROOT / s).rglob("*.py")
        for s in PYTHON_SOURCES
    )
    for path in files:
        tree = ast.parse(path.read_text())
        constants = {}  # NAME = "VALUE" and NAME, OTHER = "VALUE", "OTHER"
        for node in ast.walk(tree):
            if isinstance(node, ast.Assign):
                targets, values = node.targets[0], node.value
                pairs = (
                    zip(targets.elts, values.elts, strict=False)
                    if isinstance(targets, ast.Tuple) and isinstance(values, ast.Tuple)
                    else [(targets, values)]
                )
                for target, value in pairs:
                    if isinstance(target, ast.Name) and isinstance(value, ast.Constant):
                        constants[target.id] = value.value
        for node in ast.walk(tree):
            key = None
            if isinstance(node, ast.Call) and ast.unparse(node.func) in (
                "os.environ.get",
                "os.environ.setdefault",
                "os.getenv",
            ):
                key = node.args[0]
            elif isinstance(node, ast.Subscript) and ast.unparse(node.value) == "os.environ":
                key = node.slice
            if isinstance(key, ast.Constant):
                names.add(key.value)
            elif isinstance(key, ast.Name):
                names.add(constants[key.id])
    for folder in SHELL_SOURCES:
        for path in (PROJECT_ROOT / folder).rglob("*"):
            if path.is_file() and (path.suffix == ".sh" or path.read_bytes().startswith(b"#!")):
                names |= set(re.findall(r"\$\{([A-Z_][A-Z0-9_]*):?[-=?]", path.read_text()))
    return names - SYSTEM


def test_the_configuration_page_lists_every_key(compose_config):
    text = CONFIGURATION.read_text()
    assert first_column(section(text, "## run.py's keys")) == config_keys(compose_config, "config")
    analyze_only = config_keys(compose_config, "analyze") - config_keys(compose_config, "config")
    assert first_column(section(text, "## analyze.py's keys")) == analyze_only
    launchers = set()
    for path in (PROJECT_ROOT / "conf" / "hydra" / "launcher").glob("*.yaml"):
        node = OmegaConf.to_container(OmegaConf.load(path))
        launchers |= {f"hydra.launcher.{k}" for k in leaves(node)}
    launchers -= {"hydra.launcher.defaults", "hydra.launcher._target_"}
    assert first_column(section(text, "## Launcher keys")) == launchers


def test_the_configuration_page_lists_every_environment_variable():
    listed = first_column(section(CONFIGURATION.read_text(), "### Read by hw3"))
    assert listed == environment_reads()


def test_the_readme_is_a_front_door():
    text = (PROJECT_ROOT / "README.md").read_text()
    assert len(text.splitlines()) <= 150
    headings = re.findall(r"^## (.+)$", text, flags=re.MULTILINE)
    for needed in ("Prerequisites", "Quick start", "Results", "Tests", "Layout"):
        assert needed in headings, f"README.md: no section {needed}"
    assert "docs/results.md" in section(text, "## Results")
