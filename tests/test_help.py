"""--help: the project header above Hydra's config groups and config dump, for both commands."""

from __future__ import annotations

import re
import string

import pytest
from support.cli import run_cli

from hw3.analysis import config as analysis_config
from hw3.tracking.schema import PROJECT_ROOT

analysis_config.register()

PRESETS = sorted(p.stem for p in (PROJECT_ROOT / "conf" / "experiment").glob("*.yaml"))
ENTRY_POINTS = {"run.py": "config", "analyze.py": "analyze"}


def presets_listed(header: str) -> dict[str, str]:
    """The header's preset lines (two-space indent, name, description) → {name: description}."""
    block = header.split("Presets", 1)[1].split("\n\n", 1)[0]
    return dict(re.findall(r"^  (\w+) {2,}(\S.*)$", block, flags=re.MULTILINE))


def rendered(template: str) -> str:
    """The help text as Hydra renders it (string.Template: a stray $ would fail here)."""
    fields = ("FLAGS_HELP", "HYDRA_CONFIG_GROUPS", "APP_CONFIG_GROUPS", "CONFIG")
    return string.Template(template).substitute({f: f"<{f}>" for f in fields})


def test_the_help_header_says_what_hw3_is_its_presets_the_first_commands_and_the_outputs(
    compose_config,
):
    header = compose_config(hydra=True).hydra.help.header
    assert header.startswith("hw3: does BatchNorm make a ConvNet's loss smoother")
    listed = presets_listed(header)
    assert sorted(listed) == PRESETS  # one line per file of conf/experiment/, no more
    assert all(len(description) > 20 for description in listed.values())
    assert "python run.py -m experiment=smoke" in header
    assert "python analyze.py experiment=smoke" in header
    for where in ("mlruns/mlflow.db", "scripts/mlflow-ui", "reports/<experiment>/", "REPORT.md"):
        assert where in header


@pytest.mark.parametrize(("script", "config_name"), ENTRY_POINTS.items())
def test_each_command_puts_the_header_above_hydras_groups_and_config(
    compose_config, script, config_name
):
    help_cfg = compose_config(config_name=config_name, hydra=True).hydra.help
    text = rendered(help_cfg.template)
    assert text.startswith(help_cfg.header)
    assert f"python {script} " in text.split("== Usage ==", 1)[1]
    groups = text.index("<APP_CONFIG_GROUPS>")
    assert text.index(help_cfg.header) < groups < text.index("<CONFIG>")


@pytest.mark.slow
@pytest.mark.parametrize("script", ENTRY_POINTS)
def test_help_renders_through_hydra(script):
    result = run_cli(script, "--help")
    assert result.returncode == 0, result.stderr[-3000:]
    text = result.stdout
    assert sorted(presets_listed(text)) == PRESETS
    assert f"experiment: {', '.join(PRESETS)}" in text  # the groups
    assert "\ntracking:\n  uri: null\n" in text  # the config dump
