"""The code a run ran: the git commit, whether the checkout was dirty, and a digest of the uncommitted diff."""
from __future__ import annotations

import hashlib
import subprocess
from pathlib import Path

from nf_trainer.core.paths import project_root


def git_info(root: Path | None = None) -> dict[str, str]:
    """Of the clone, or (installed) of the repository the command runs in."""
    root = root or project_root()

    def git(*args: str) -> str:
        done = subprocess.run(["git", *args], cwd=root, capture_output=True, text=True, timeout=5)
        return done.stdout.strip() if done.returncode == 0 else ""

    try:
        commit = git("rev-parse", "--verify", "HEAD")
    except (OSError, subprocess.SubprocessError):  # no git, or not a checkout: no git tags
        return {}
    if not commit:
        return {}
    info = {"git.commit": commit, "git.dirty": str(bool(git("status", "--porcelain", "--untracked-files=no")))}
    if info["git.dirty"] == "True":  # which uncommitted state: a sweep re-run after a code edit starts afresh
        info["git.diff_sha"] = hashlib.sha256(git("diff", "HEAD").encode()).hexdigest()[:12]
    return info
