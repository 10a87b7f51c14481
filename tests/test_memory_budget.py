"""`--memory-budget auto`: the limit read from cgroup v1 and v2 files, the shares taken from it, and the
models' sessions held within theirs. The cgroup files are written as the kernel lays them out; the real
container limit is tested in test_container.py."""

from __future__ import annotations

from pathlib import Path

import pytest

from dreamstream.modeldir import read_manifest
from dreamstream.server.memory_budget import (
    MIN_AUTO_BUDGET,
    SERVER_BYTES,
    MemoryBudgetError,
    cgroup_memory_limit,
    memory_limit,
    plan_memory,
)
from dreamstream.server.models import ModelRepository
from dreamstream.server.sessions import session_memory

GIB = 2**30
MEMINFO = "MemTotal:       24683796 kB\nMemFree:        1000000 kB\n"


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


@pytest.fixture
def meminfo(tmp_path: Path) -> Path:
    return write(tmp_path / "meminfo", MEMINFO)


def test_cgroup_v2_reads_memory_max_in_a_container_namespace(tmp_path: Path, meminfo: Path) -> None:
    root = tmp_path / "cgroup"
    write(root / "memory.max", f"{2 * GIB}\n")
    proc = write(tmp_path / "self-cgroup", "0::/\n")
    assert cgroup_memory_limit(root, proc) == (2 * GIB, "cgroup v2 memory.max")
    assert memory_limit(root, proc, meminfo) == (2 * GIB, "cgroup v2 memory.max")


def test_cgroup_v2_takes_the_smallest_limit_along_the_path_and_max_is_none(tmp_path: Path, meminfo: Path) -> None:
    root = tmp_path / "cgroup"
    write(root / "kubepods" / "memory.max", f"{3 * GIB}\n")
    write(root / "kubepods" / "pod1" / "memory.max", "max\n")
    write(root / "kubepods" / "pod1" / "app" / "memory.max", "max\n")
    proc = write(tmp_path / "self-cgroup", "0::/kubepods/pod1/app\n")
    assert cgroup_memory_limit(root, proc) == (3 * GIB, "cgroup v2 memory.max")
    write(root / "kubepods" / "memory.max", "max\n")
    assert cgroup_memory_limit(root, proc) is None
    assert memory_limit(root, proc, meminfo) == (24683796 * 1024, "machine memory")


def test_cgroup_v1_reads_the_memory_controllers_limit_and_its_no_limit_value(tmp_path: Path, meminfo: Path) -> None:
    root = tmp_path / "cgroup"
    limit = write(root / "memory" / "memory.limit_in_bytes", f"{2 * GIB}\n")
    # Docker on cgroup v1 without a cgroup namespace: the host's path, the container's own files at the mount.
    proc = write(tmp_path / "self-cgroup", "12:cpu,cpuacct:/docker/abc\n4:memory:/docker/abc\n0::/\n")
    assert cgroup_memory_limit(root, proc) == (2 * GIB, "cgroup v1 memory.limit_in_bytes")
    limit.write_text("9223372036854771712\n")  # v1's "unlimited"
    assert cgroup_memory_limit(root, proc) is None


def test_a_limit_above_the_machines_memory_is_the_machines(tmp_path: Path, meminfo: Path) -> None:
    root = tmp_path / "cgroup"
    write(root / "memory.max", f"{64 * GIB}\n")
    proc = write(tmp_path / "self-cgroup", "0::/\n")
    assert memory_limit(root, proc, meminfo)[1] == "machine memory"


def test_auto_keeps_the_server_the_sessions_and_a_tenth_and_gives_dreams_the_rest(lite0_dir: Path) -> None:
    plan = plan_memory(lite0_dir.parent, limit=(2 * GIB, "cgroup v2 memory.max"))
    assert plan.sessions == GIB // 2
    assert plan.dreams == 2 * GIB - SERVER_BYTES - plan.sessions - int(0.1 * 2 * GIB)
    assert "for dreams" in plan.describe() and "2,048 MiB" in plan.describe()
    assert plan_memory(lite0_dir.parent, dream_budget=300 * 2**20, limit=(2 * GIB, "x")).dreams == 300 * 2**20


def test_auto_refuses_to_start_where_no_dream_would_fit(lite0_dir: Path) -> None:
    with pytest.raises(MemoryBudgetError, match="leaves less than 256 MiB for dreams: give the container more"):
        plan_memory(lite0_dir.parent, limit=(600 * 2**20, "cgroup v2 memory.max"))
    assert MIN_AUTO_BUDGET == 256 * 2**20


def test_the_sessions_stay_within_their_budget_least_recently_used_closed_first(lite0_dir: Path) -> None:
    manifest = read_manifest(lite0_dir)
    repository = ModelRepository(lite0_dir.parent, device="cpu", session_budget=64 * 2**20)
    repository.load()
    model = repository.get("")
    for layer in manifest.layers:
        model.session(layer.focus_step_graph)
        assert repository.sessions.held <= 64 * 2**20 or model.session_count == 1
    assert model.session_count < len({layer.focus_step_graph for layer in manifest.layers})
    deepest = manifest.layers[-1].focus_step_graph
    assert model.session(deepest) is model.session(deepest)  # still open: the most recently used
    assert session_memory(0) > 0


def test_a_session_being_opened_holds_up_no_request_for_another(lite0_dir: Path) -> None:
    # Dreams ask for their session at every step: one dream opening a new graph (a second
    # or more) must not stall the others' steps.
    import threading

    from dreamstream.server.providers import Device, open_session
    from dreamstream.server.sessions import SessionCache

    layers = read_manifest(lite0_dir).layers
    first, second = (lite0_dir / layers[0].step_graph, 1), (lite0_dir / layers[1].step_graph, 1)
    cache = SessionCache()
    device = Device("cpu", "cpu", 1)
    ready = cache.get(first, 0, lambda: open_session(first[0], device))
    release = threading.Event()

    def slow_open():
        release.wait(30)
        return open_session(second[0], device)

    opener = threading.Thread(target=cache.get, args=(second, 0, slow_open))
    opener.start()
    try:
        assert cache.get(first, 0, lambda: pytest.fail("reopened")) is ready  # while the other opens
        assert opener.is_alive()
    finally:
        release.set()
        opener.join(30)
    assert cache.count() == 2
    assert cache.get(second, 0, lambda: pytest.fail("opened twice")) is not ready
