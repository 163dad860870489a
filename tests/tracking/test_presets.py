"""The presets of conf/experiment run end to end, each as a tiny version of itself: what a
preset sets is what its runs log (the sweep's grid narrowed on the command line)."""

from __future__ import annotations

import pytest
from support.cli import job_args, output, run_cli
from support.runs import runs_in

pytestmark = pytest.mark.slow  # each starts run.py and trains

PROFILE = "[0.25, 0.5, 1.0, 2.0, 4.0]"  # conf/experiment/landscape.yaml's smoothness.scales


def test_the_landscape_preset_logs_k_directions_the_profile_and_sharpness(tmp_path, tiny_root):
    tiny = ["smoothness.directions=2", "smoothness.sharpness_examples=64"]
    grid = ["model=bn", "seed=0", "trainer.epochs=1", "smoothness.sharpness_iters=3", *tiny]
    args = job_args(tmp_path, tiny_root, "landscape", "experiment=landscape", *grid)
    done = run_cli("run.py", "-m", *args)
    assert done.returncode == 0, done.stderr[-3000:]
    (run,) = runs_in(tmp_path, "landscape")
    assert run.info.status == "FINISHED", output(done)[-3000:]
    params = run.data.params
    assert (params["smoothness.scales"], params["smoothness.sharpness"]) == (PROFILE, "True")
    assert params["smoothness.directions"] == "2"
    metrics = run.data.metrics
    assert {"smoothness/L_std", "smoothness/L_min", "smoothness/L_max"} <= set(metrics)
    assert metrics["smoothness/L_min"] <= metrics["smoothness/L"] <= metrics["smoothness/L_max"]
    assert metrics["smoothness/sharpness"] > 0


def test_the_lr_stability_preset_keeps_a_diverged_run_as_a_result(tmp_path, tiny_root):
    grid = ["model=plain", "seed=0", "optimizer.lr=0.04,1e5", "trainer.epochs=2"]
    args = job_args(tmp_path, tiny_root, "stability", "experiment=lr_stability", *grid)
    done = run_cli("run.py", "-m", *args)
    assert done.returncode == 0, done.stderr[-3000:]
    runs = {r.data.params["optimizer.lr"]: r for r in runs_in(tmp_path, "stability")}
    assert sorted(runs) == ["0.04", "100000.0"]
    for run in runs.values():
        assert run.info.status == "FINISHED", output(done)[-3000:]
        params = run.data.params
        assert (params["data.train_size"], params["trainer.on_divergence"]) == ("10000", "stop")
        assert params["smoothness.enabled"] == "False"
        assert not [k for k in run.data.metrics if k.startswith("smoothness/")]
    assert runs["100000.0"].data.tags["diverged"] == "true"
    assert "diverged" not in runs["0.04"].data.tags
