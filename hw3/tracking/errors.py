"""What the command line reports in one line: a launch's errors, and any error's first line
(light: no MLflow, no torch)."""

from __future__ import annotations


class LaunchFailed(BaseException):
    """A sweep cannot be launched as configured; its message names the fix. A BaseException:
    Hydra only warns about a callback's or a launcher's Exception, then launches every job."""


def first_line(err: BaseException) -> str:
    """The first line of `err`'s message (MLflow's own, not its repr), else its type's name."""
    text = str(getattr(err, "message", None) or err)
    return text.splitlines()[0] if text.strip() else type(err).__name__
