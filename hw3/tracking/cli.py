"""Command-line plumbing shared by run.py and analyze.py: every known error as one line."""

from __future__ import annotations

import logging
import os
import re
import subprocess
import sys
from collections.abc import Callable
from concurrent.futures.process import BrokenProcessPool
from typing import NoReturn

from hydra.core.hydra_config import HydraConfig
from hydra.errors import CompactHydraException, HydraException
from hydra.types import RunMode
from omegaconf.errors import OmegaConfBaseException

from hw3.tracking.errors import LaunchFailed, first_line
from hw3.tracking.stopping import Stopped

log = logging.getLogger("hw3")
HINT = "(python run.py --help lists the groups; --cfg job prints the composed config)"
_NOISE = ("full_key:", "reference_type=", "object_type=", "To append to your config use")
RELAUNCH = (
    "relaunch the same command: FINISHED runs are skipped, the others resume from their last pass"
)
# submitit's messages for a job that left no result, and for one that raised outside Hydra's job
_NO_RESULT = re.compile(
    r"Job (\S+) \(task: \d+\) with path (\S+)_result\.pkl\s.*\(state: ([^)]*)\)"
)
_RAISED = re.compile(r"with trace:\n-+\n(.*?)\n-+\n.*?paths:\s+- (\S+)", re.DOTALL)


class JobFailed(CompactHydraException):
    """A job's own one-line failure, raised so that a sweep goes on and then exits non-zero."""


def one_line(err: BaseException) -> str:
    """Hydra's and OmegaConf's multi-line messages folded into one line."""
    text = ""
    for raw in str(err).splitlines():
        line = raw.strip().rstrip(".")
        if line.startswith("Config search path"):
            break
        if not line or line.startswith(_NOISE):
            continue
        # items listed under a heading ("Available options in 'model':") join with commas
        sep = ", " if raw.startswith("\t") and not text.endswith(":") else "; "
        text = f"{text}{sep if text else ''}{line}".replace(":; ", ": ")
    cause = err.__cause__
    if isinstance(cause, OmegaConfBaseException) and first_line(cause) not in text:
        text += f": {first_line(cause)}"
    if isinstance(err, JobFailed):
        return text
    return f"{text} {HINT}"


def slurm_failure(err: RuntimeError) -> str | None:
    """submitit's multi-line error (no srun here, sbatch refused the jobs, or a job died) as one
    line; None for an error that is not submitit's."""
    # Imported only here: the other launchers never load submitit.
    from submitit.core.utils import FailedJobError, UncompletedJobError

    if str(err).startswith('Could not detect "srun"'):
        return (
            "no srun here: hydra/launcher=slurm submits from a machine with Slurm's commands "
            "(a local cluster to try it on: sudo scripts/slurm-local up)"
        )
    if not isinstance(err, UncompletedJobError):
        return None
    text = str(err).strip()
    if isinstance(err.__cause__, subprocess.CalledProcessError):  # sbatch's own reasons
        reasons = "; ".join(line.removeprefix("sbatch: error: ") for line in text.splitlines())
        return (
            f"Slurm refused the sweep's jobs ({reasons}); none was submitted: fix the "
            "hydra.launcher keys (partition, mem_gb, cpus_per_task, gpus_per_task: sinfo -N -l "
            "lists the cluster's) and relaunch"
        )
    if isinstance(err, FailedJobError) and (raised := _RAISED.search(text)):
        trace, stderr = raised.groups()
        why = trace.strip().splitlines()[-1]
        return (
            f"a Slurm job failed before training ({why}; its log: {stderr}); "
            f"fix it, then {RELAUNCH}"
        )
    if died := _NO_RESULT.match(text):
        job, path, state = died.groups()
        return (
            f"Slurm job {job} ended without a result (state {state}; its log: {path}_log.err) "
            f"and the sweep stopped waiting (its other jobs go on); {RELAUNCH}"
        )
    return f"a Slurm job failed ({text.splitlines()[0]}); {RELAUNCH}"


def exit_with(message: str) -> NoReturn:
    """Print `error: message` on stderr and exit 1 (SystemExit: no Hydra handler catches it)."""
    print(f"error: {message}", file=sys.stderr)
    raise SystemExit(1)


def job_failed(message: str) -> JobFailed:
    """A sweep job's failure, logged: Hydra records it, the sweep goes on, then exits 1."""
    log.error(message)
    return JobFailed(message)


def fail(message: str) -> None:
    """End the current Hydra job as failed: a single run exits 1, a sweep job raises."""
    if HydraConfig.get().mode == RunMode.MULTIRUN:
        raise job_failed(message)
    exit_with(message)


def main_with_one_line_errors(main: Callable[[], None]) -> None:
    """Run a `@hydra.main` function; configuration errors print one line and exit 1."""
    os.environ.setdefault("HYDRA_FULL_ERROR", "1")  # Hydra re-raises; we print, not it
    try:
        main()
    except LaunchFailed as err:
        exit_with(str(err))
    except Stopped as err:  # while no job trained: the jobs that did ended their runs
        exit_with(f"{err}; {RELAUNCH}")
    except (HydraException, OmegaConfBaseException) as err:
        exit_with(one_line(err))
    except BrokenProcessPool as err:  # joblib's loky: a parallel sweep's worker process died
        lines = str(err).splitlines() or [type(err).__name__]
        why = next((line for line in lines if "exit code" in line), lines[0]).rstrip(".")
        exit_with(f"a sweep job's process died ({why}) and the sweep stopped; {RELAUNCH}")
    except ValueError as err:  # Hydra's own check of its flags, e.g. `-m --cfg job`
        if not str(err).startswith("Only one of --run"):
            raise
        exit_with(f"{err}: give one (--cfg job prints the composed config, -m launches a sweep)")
    except RuntimeError as err:  # submitit's, for hydra/launcher=slurm
        if (message := slurm_failure(err)) is None:
            raise
        exit_with(message)
