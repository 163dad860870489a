"""Errors of a launch that the command line reports in one line (light: no MLflow, no torch)."""

from __future__ import annotations


class LaunchFailed(BaseException):
    """A sweep cannot be launched as configured; its message names the fix. A BaseException:
    Hydra only warns about a callback's or a launcher's Exception, then launches every job."""
