"""Before the MLflow UI starts (scripts/mlflow-ui): mark the project's experiments as model
training, so that MLflow 3's UI shows them as such, and print the link that opens each one in
its "Model training" view (the UI otherwise opens on its GenAI view)."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from pathlib import Path

os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")  # see hw3/tracking/__init__.py

from mlflow.entities import Experiment
from mlflow.tracking import MlflowClient

KIND_TAG = "mlflow.experimentKind"
MODEL_TRAINING = "custom_model_development"
PROJECT_RUNS = ("train", "sweep", "analysis")  # the `kind` tags of the runs hw3 logs
VIEW = "runs?workflowType=machine_learning"  # the experiment page's "Model training" view


def project_experiments(client: MlflowClient) -> list[Experiment]:
    """The experiments that hold runs hw3 logged, by name."""
    experiments = [
        e
        for e in client.search_experiments()
        if any(
            client.search_runs([e.experiment_id], f"tags.kind = '{kind}'", max_results=1)
            for kind in PROJECT_RUNS
        )
    ]
    return sorted(experiments, key=lambda e: e.name)


def mark_model_training(client: MlflowClient, experiments: Sequence[Experiment]) -> list[str]:
    """Tag the experiments that have no kind yet as model development; their names."""
    unmarked = [e for e in experiments if KIND_TAG not in e.tags]
    for e in unmarked:
        client.set_experiment_tag(e.experiment_id, KIND_TAG, MODEL_TRAINING)
    return [e.name for e in unmarked]


def experiment_url(base: str, experiment_id: str) -> str:
    """The UI's link to an experiment's runs in the "Model training" view."""
    return f"{base}/#/experiments/{experiment_id}/{VIEW}"


def main(argv: Sequence[str]) -> None:
    """Mark the store's project experiments and print their links (nothing to do without one)."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--store", required=True, help="the tracking URI the UI serves")
    parser.add_argument("--url", required=True, help="where the UI will listen, http://HOST:PORT")
    args = parser.parse_args(argv)
    print(f"The MLflow UI: {args.url}/#/experiments?workflowType=machine_learning")
    db = args.store.removeprefix("sqlite:///")
    if db != args.store and not Path(db).is_file():
        print(f"No runs yet: {db} does not exist.")
        return
    client = MlflowClient(args.store)
    experiments = project_experiments(client)
    marked = mark_model_training(client, experiments)
    if marked:
        print(f"Marked as model training ({KIND_TAG}): {', '.join(marked)}")
    for e in experiments:
        print(f"  {e.name}: {experiment_url(args.url, e.experiment_id)}")


if __name__ == "__main__":
    main(sys.argv[1:])
