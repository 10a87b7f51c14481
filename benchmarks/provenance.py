"""Where a figure comes from: the commit, the date, the machine and the command of a benchmark run.

Every benchmark entry point writes its results as `benchmarks/results/NAME.json`
with `stamp(command)` under "provenance", so a figure quoted in the README can be
traced to the run that measured it (and `tests/test_figures.py` checks that the
README quotes nothing else).
"""

from __future__ import annotations

import json
import os
import platform
import subprocess
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results"


def _version(package: str) -> str | None:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return None


def cpu_quota() -> float | None:
    """The CPUs a cgroup v2 quota allows this process (cpu.max), or None without a quota."""
    try:
        quota, period = Path("/sys/fs/cgroup/cpu.max").read_text().split()
    except (OSError, ValueError):
        return None
    return None if quota == "max" else int(quota) / int(period)


def machine() -> dict[str, Any]:
    """The CPU, its count and the software versions the figures depend on."""
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    try:
        load = os.getloadavg()[0]
    except OSError:
        load = None
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "cpu_quota": cpu_quota(),
        "load_average_1min": load,  # a shared machine's neighbours slow both sides alike
        "python": platform.python_version(),
        "platform": platform.platform(),
        "torch": _version("torch"),
        "onnxruntime": _version("onnxruntime"),
        "numpy": _version("numpy"),
    }


def revision() -> str:
    """The commit measured, and whether the engine or the export tool had uncommitted changes."""
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True, check=True
        ).stdout.strip()
        changed = subprocess.run(
            ["git", "status", "--porcelain", "--", "server", "export"], cwd=REPO, capture_output=True, text=True
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown (not a git checkout)"
    return f"{commit} with uncommitted changes in server/ or export/" if changed else commit


def stamp(command: str) -> dict[str, Any]:
    """The provenance of a run starting now."""
    return {
        "commit": revision(),
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": machine(),
        "command": command,
    }


def write_results(name: str, provenance: dict[str, Any], figures: dict[str, Any], out: Path = RESULTS) -> Path:
    """`out/NAME.json`: {"provenance": ..., "figures": ...}; returns the path."""
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"{name}.json"
    path.write_text(json.dumps({"provenance": provenance, "figures": figures}, indent=2) + "\n")
    return path


def read_results(name: str, folder: Path = RESULTS) -> dict[str, Any]:
    """What `write_results(name, ...)` wrote into `folder`."""
    return json.loads((folder / f"{name}.json").read_text())
