"""Composition of every preset and group, and the errors bad values give."""

from __future__ import annotations

import pytest
from hydra.errors import ConfigCompositionException
from omegaconf import OmegaConf
from omegaconf.errors import ValidationError

from hw3.tracking.cli import one_line
from hw3.tracking.job import config_fingerprint
from hw3.tracking.schema import PLACE_KEYS, Config, ConfigError, flatten, validate


@pytest.mark.parametrize("model", ["plain", "bn", "stride"])
def test_every_model_composes_to_a_valid_typed_config(compose_config, model):
    cfg = compose_config(f"model={model}")
    typed = validate(OmegaConf.to_object(cfg))
    assert isinstance(typed, Config)
    assert typed.model.name == model
    assert typed.optimizer.lr == 0.04
    assert (typed.trainer.epochs, typed.trainer.batch_size) == (10, 32)
    assert typed.seed == 0


@pytest.mark.parametrize(
    ("preset", "experiment", "grid"),
    [
        ("batchnorm", "hw3-batchnorm", {"model": "plain,bn", "seed": "range(5)"}),
        ("stride", "hw3-stride", {"model": "plain,stride", "seed": "range(5)"}),
        ("smoke", "hw3-smoke", {"model": "plain,bn,stride", "seed": "0,1"}),
    ],
)
def test_presets_set_their_experiment_and_sweep_grid(compose_config, preset, experiment, grid):
    cfg = compose_config(f"experiment={preset}", hydra=True)
    assert cfg.tracking.experiment == experiment
    assert dict(cfg.hydra.sweeper.params) == grid


def test_smoke_preset_is_small(compose_config):
    cfg = compose_config("experiment=smoke")
    assert cfg.trainer.epochs == 2
    assert cfg.data.train_size is not None and cfg.data.train_size <= 5000


# The most used overrides (README, docs/configuration.md), each with a value other than its default,
# and what it composes to.
PUBLIC = {
    "model=bn": {"model.name": "bn"},
    "seed=3": {"seed": 3},
    "optimizer=sgd_momentum": {"optimizer.name": "sgd_momentum", "optimizer.momentum": 0.9},
    "optimizer.lr=0.1": {"optimizer.lr": 0.1},
    "trainer.epochs=2": {"trainer.epochs": 2},
    "trainer.batch_size=64": {"trainer.batch_size": 64},
    "trainer.device=cpu": {"trainer.device": "cpu"},
    "data.root=/tmp/d": {"data.root": "/tmp/d"},
    "data.train_size=100": {"data.train_size": 100},
    "data.test_size=50": {"data.test_size": 50},
    "tracking.uri=sqlite:////tmp/x.db": {"tracking.uri": "sqlite:////tmp/x.db"},
    "tracking.experiment=e": {"tracking.experiment": "e"},
    "force=true": {"force": True},
}


def test_public_overrides_set_their_keys_and_nothing_else(compose_config):
    default = flatten(OmegaConf.to_object(compose_config()))
    flat = flatten(OmegaConf.to_object(compose_config(*PUBLIC)))
    expected = {k: v for changes in PUBLIC.values() for k, v in changes.items()}
    assert {k: v for k, v in flat.items() if v != default[k]} == expected


def test_the_momentum_preset_changes_only_the_momentum(compose_config):
    default = flatten(OmegaConf.to_object(compose_config()))
    flat = flatten(OmegaConf.to_object(compose_config("optimizer=sgd_momentum")))
    changed = {k: v for k, v in flat.items() if v != default[k]}
    assert changed == {"optimizer.name": "sgd_momentum", "optimizer.momentum": 0.9}


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("optimizer.lr=0", "invalid optimizer.lr=0.0: it must be > 0"),
        ("optimizer.momentum=1.5", "invalid optimizer.momentum=1.5"),
        ("trainer.epochs=0", "invalid trainer.epochs=0: it must be >= 1"),
        ("trainer.batch_size=0", "invalid trainer.batch_size=0"),
        ("data.train_size=0", "invalid data.train_size=0: it must be >= 1 or null"),
        ("trainer.device=tpu", "invalid trainer.device='tpu'"),
    ],
)
def test_out_of_range_values_fail_validation(compose_config, override, message):
    cfg = compose_config(override)
    with pytest.raises(ConfigError, match=message.replace("(", r"\(")):
        validate(OmegaConf.to_object(cfg))


def test_wrong_type_fails_composition_in_one_line(compose_config):
    with pytest.raises(ConfigCompositionException) as info:
        compose_config("trainer.epochs=abc")
    assert isinstance(info.value.__cause__, ValidationError)
    line = one_line(info.value)
    assert "\n" not in line and "trainer.epochs=abc" in line and "Integer" in line


def test_typo_and_unknown_group_name_the_problem(compose_config):
    with pytest.raises(ConfigCompositionException) as typo:
        compose_config("trainer.epoch=3")
    assert "Key 'epoch' not in 'TrainerConfig'" in one_line(typo.value)
    with pytest.raises(ConfigCompositionException) as group:
        compose_config("model=resnet")
    line = one_line(group.value)
    assert (
        "\n" not in line and "Available options in 'model': bn, bn_noisy, gn, plain, stride" in line
    )


# One override per key that must not change the fingerprint: where things live, how fast.
WHERE_AND_HOW = {
    "tracking.uri": "sqlite:////tmp/y.db",
    "tracking.experiment": "elsewhere",
    "tracking.heartbeat_s": 5,
    "tracking.stale_after_s": 60,
    "force": "true",
    "data.root": "/x",
    "data.download": "false",
    "data.verify": "false",
    "trainer.checkpoint_dir": "/tmp/ckpt",
    "trainer.device": "cpu",
    "trainer.chunk_size": 77,
    "trainer.cuda_graphs": "false",
    "trainer.deterministic": "false",
}
WHAT = [
    "seed=1",
    "model=bn",
    "optimizer=sgd_momentum",
    "optimizer.lr=0.1",
    "optimizer.momentum=0.5",
    "optimizer.weight_decay=0.001",
    "data.normalize=false",
    "data.mean=0.5",
    "data.train_size=100",
    "data.test_size=100",
    "trainer.epochs=3",
    "trainer.batch_size=64",
    "smoothness.enabled=false",
    "smoothness.directions=4",
    "smoothness.scales=[0.5,1,2]",
    "smoothness.sharpness=true",
    "smoothness.sharpness_examples=1000",
    "smoothness.sharpness_iters=5",
    "smoothness.sharpness_tol=0.01",
    "trainer.on_divergence=stop",
]


def fingerprint_of(compose_config, *overrides: str) -> str:
    return config_fingerprint(OmegaConf.to_object(compose_config(*overrides)))


@pytest.fixture(scope="module")
def default_fingerprint(compose_config) -> str:
    """The default config's fingerprint, composed once for the cases below."""
    return fingerprint_of(compose_config)


def test_every_where_and_how_key_is_tried():
    assert set(WHERE_AND_HOW) == set(PLACE_KEYS)


@pytest.mark.parametrize(("key", "value"), WHERE_AND_HOW.items())
def test_where_and_how_keys_leave_the_fingerprint_alone(
    compose_config, default_fingerprint, key, value
):
    assert fingerprint_of(compose_config, f"{key}={value}") == default_fingerprint


@pytest.mark.parametrize("override", WHAT)
def test_what_keys_change_the_fingerprint(compose_config, default_fingerprint, override):
    assert fingerprint_of(compose_config, override) != default_fingerprint
