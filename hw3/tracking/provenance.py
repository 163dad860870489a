"""What identifies a run's configuration and the code that ran it: a config's fingerprint, the
project's git commit."""

from __future__ import annotations

import hashlib
import json
import subprocess
from typing import Any

from hw3.tracking.schema import PROJECT_ROOT


def fingerprint(values: dict[str, Any]) -> str:
    """A short stable hash of a flat config."""
    blob = json.dumps(values, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


def git_state() -> dict[str, str]:
    """The project's commit and whether its working tree is dirty ('unknown' outside git)."""

    def git(*args: str) -> str:
        return subprocess.run(
            ["git", *args], cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=10, check=True
        ).stdout.strip()

    try:
        return {
            "git_commit": git("rev-parse", "HEAD"),
            "git_dirty": str(bool(git("status", "--porcelain"))).lower(),
        }
    except (OSError, subprocess.SubprocessError):
        return {"git_commit": "unknown", "git_dirty": "unknown"}
