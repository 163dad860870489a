"""What the tests share besides fixtures (those are in conftest.py), by concern:

- `data`: tiny IDX datasets and synthetic splits, the official files where this machine has them;
- `runs`: what a test run is and logs (metrics, the measurement, the 2×2 sweep, the pair) and
  reading it back;
- `stores`: SQLite stores with MLflow's schema, copies of runs written by SQL;
- `cli`: the project's scripts (run.py, analyze.py, the benchmarks) as processes (forked from
  `warm`'s interpreter where they may be), their overrides and output;
- `processes`: waiting on, launching and killing processes and their groups;
- `server`: a real `mlflow server`;
- `warm`: the interpreter that has imported torch, MLflow and Hydra once and forks the scripts.
"""
