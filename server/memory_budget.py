"""The memory budget of `serve --memory-budget auto` (the default): what the dreams may take together.

In a container the bound is the cgroup's memory limit (cgroup v2's memory.max, or v1's
memory.limit_in_bytes, the smallest along the process's cgroup and its parents: a
parent's limit holds for its children); outside one, or where no limit is set, the
machine's memory. Of it, three parts are kept for what is not a dream:
- the server itself (SERVER_BYTES: Python, numpy, gRPC and ONNX Runtime loaded);
- the models' sessions, held within a budget of their own (SESSION_SHARE of the limit, at
  least two sessions of the largest graph: see sessions.SessionCache);
- a tenth of the limit for what no estimate sees (the allocator's fragmentation,
  requests in transit).
Dreams wait for room within the rest, and one that alone is above it is refused
(engine.limits); the server tiles by itself the pictures whose untiled step would not fit.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from dreamstream.modeldir import ManifestError, read_manifest
from dreamstream.server.sessions import session_memory

CGROUP_ROOT = Path("/sys/fs/cgroup")
PROC_SELF_CGROUP = Path("/proc/self/cgroup")
PROC_MEMINFO = Path("/proc/meminfo")
_MIB = 2**20
# v1 writes "no limit" as the largest page-aligned signed 64-bit number; anything this large is none.
_NO_LIMIT = 2**60

# The server without a dream or a session: measured VmRSS after loading efficientnet-lite0 and
# googlenet-bvlc with their default graphs open, 144 MiB; rounded up for thread stacks and
# the gRPC and metrics servers under load.
SERVER_BYTES = 256 * _MIB
# The share of the limit the open sessions may hold (each holds the weights its graph reads).
SESSION_SHARE = 0.25
# Kept back from the limit for what no estimate sees: fragmentation, requests in transit.
UNSEEN_SHARE = 0.10
# The smallest dream budget `auto` gives: below it a dream of the default size would not run.
MIN_AUTO_BUDGET = 256 * _MIB


class MemoryBudgetError(ValueError):
    """No room for dreams: the limit is below what the server and its models take."""


@dataclass(frozen=True)
class MemoryPlan:
    """How the server's memory is shared out (logged at start)."""

    limit: int  # the container's limit or the machine's memory
    source: str  # "cgroup v2 memory.max", "cgroup v1 memory.limit_in_bytes" or "machine memory"
    sessions: int  # bytes the open sessions may hold
    dreams: int  # bytes the running dreams may take together: the rest, less SERVER_BYTES and UNSEEN_SHARE

    def describe(self) -> str:
        return (
            f"memory: {self.source} {self.limit / _MIB:,.0f} MiB; {self.dreams / _MIB:,.0f} MiB for dreams, "
            f"{self.sessions / _MIB:,.0f} MiB for the models' sessions, the rest for the server"
        )


def cgroup_memory_limit(root: Path = CGROUP_ROOT, proc_self_cgroup: Path = PROC_SELF_CGROUP) -> tuple[int, str] | None:
    """The memory limit of this process's cgroup (v2 or v1) and where it was read; None when unlimited."""
    try:
        lines = proc_self_cgroup.read_text().splitlines()
    except OSError:
        return None
    limits: list[tuple[int, str]] = []
    for line in lines:
        hierarchy, controllers, path = (line.split(":", 2) + ["", ""])[:3]
        if hierarchy == "0" and controllers == "":  # v2: one unified hierarchy
            limits += [(value, "cgroup v2 memory.max") for value in _along(root, path, "memory.max")]
        elif "memory" in controllers.split(","):  # v1: the memory controller's own hierarchy
            found = _along(root / "memory", path, "memory.limit_in_bytes")
            limits += [(value, "cgroup v1 memory.limit_in_bytes") for value in found]
    return min(limits) if limits else None


def _along(mount: Path, path: str, name: str) -> list[int]:
    """The limits in file `name` of cgroup `path` and of its parents up to `mount` ("max" and huge: none).

    Inside a container the cgroup namespace makes `path` "/", and the mount is its own cgroup."""
    found = []
    directory = mount / path.strip("/")
    while True:
        value = _read_limit(directory / name)
        if value is not None:
            found.append(value)
        if directory == mount or mount not in directory.parents:
            return found
        directory = directory.parent


def _read_limit(path: Path) -> int | None:
    try:
        text = path.read_text().strip()
    except OSError:
        return None
    if not text.isdigit():  # "max" (v2's no limit)
        return None
    value = int(text)
    return value if value < _NO_LIMIT else None


def machine_memory(meminfo: Path = PROC_MEMINFO) -> int:
    """The machine's memory (MemTotal), in bytes."""
    match = re.search(r"^MemTotal:\s+(\d+) kB", meminfo.read_text(), re.MULTILINE)
    if match is None:
        raise MemoryBudgetError(f"{meminfo} has no MemTotal: give --memory-budget in MiB")
    return int(match.group(1)) * 1024


def largest_weights(models_root: Path) -> int:
    """The size of the largest weights file of the model folders in `models_root` (0 where none reads)."""
    sizes = [0]
    if not models_root.is_dir():
        return 0
    for folder in sorted(models_root.iterdir()):
        if folder.name.startswith("."):
            continue
        try:
            sizes.append((folder / read_manifest(folder).weights_file).stat().st_size)
        except (ManifestError, OSError, ValueError):
            continue  # the repository refuses it when loading, saying why
    return max(sizes)


def memory_limit(
    root: Path = CGROUP_ROOT, proc_self_cgroup: Path = PROC_SELF_CGROUP, meminfo: Path = PROC_MEMINFO
) -> tuple[int, str]:
    """The memory this server may use and where that was read: its cgroup's limit, or the machine's memory."""
    machine = machine_memory(meminfo)
    found = cgroup_memory_limit(root, proc_self_cgroup)
    return found if found is not None and found[0] < machine else (machine, "machine memory")


def plan_memory(models_root: Path, dream_budget: int | None = None, limit: tuple[int, str] | None = None) -> MemoryPlan:
    """The sessions' and the dreams' shares of the limit (`dream_budget` given: that for dreams)."""
    limit_bytes, source = limit if limit is not None else memory_limit()
    sessions = max(int(SESSION_SHARE * limit_bytes), 2 * session_memory(largest_weights(models_root)))
    if dream_budget is not None:
        return MemoryPlan(limit_bytes, source, sessions, dream_budget)
    dreams = limit_bytes - SERVER_BYTES - sessions - int(UNSEEN_SHARE * limit_bytes)
    if dreams < MIN_AUTO_BUDGET:
        kept = limit_bytes - dreams
        raise MemoryBudgetError(
            f"{source} is {limit_bytes / _MIB:,.0f} MiB, and the server with its models needs about "
            f"{kept / _MIB:,.0f} MiB of it, which leaves less than {MIN_AUTO_BUDGET / _MIB:,.0f} MiB for dreams: "
            "give the container more memory, serve fewer models, or set --memory-budget in MiB"
        )
    return MemoryPlan(limit_bytes, source, sessions, dreams)
