"""Debian packages that tests need beyond the Python ones (a container engine, a proxy).

A test asks for the programs it runs; what is missing is installed with apt-get, as root,
once per session. Where that cannot be done (not root, no apt-get, the install fails), the
test is skipped with the reason, never failed for a machine it cannot use.
"""

from __future__ import annotations

import os
import shutil
import subprocess

import pytest

_updated = False


def require_programs(programs: dict[str, str]) -> None:
    """Make sure every program (name -> the Debian package shipping it) is on PATH."""
    global _updated
    packages = sorted({package for program, package in programs.items() if shutil.which(program) is None})
    if not packages:
        return
    if shutil.which("apt-get") is None or os.geteuid() != 0:
        pytest.skip(f"{', '.join(packages)} not installed, and installing needs apt-get as root")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    # Waits for another apt-get (a parallel test run) instead of failing on its lock.
    lock_wait = ["-o", "DPkg::Lock::Timeout=300"]
    steps = [] if _updated else [["apt-get", *lock_wait, "update", "-q"]]
    steps.append(["apt-get", *lock_wait, "install", "-y", "-q", *packages])
    for command in steps:
        result = subprocess.run(command, capture_output=True, text=True, env=env, timeout=900)
        if result.returncode != 0:
            pytest.skip(f"`{' '.join(command)}` failed: {result.stderr.strip()[-500:]}")
    _updated = True
    missing = [program for program in programs if shutil.which(program) is None]
    if missing:
        pytest.skip(f"{', '.join(missing)} still not on PATH after installing {', '.join(packages)}")
