"""Choosing the device: CUDA only when a real session says it runs there."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import onnxruntime as ort
import pytest

from dreamstream.modeldir import read_manifest
from dreamstream.server.providers import (
    CUDA,
    SHARED_THREADS,
    CpuShare,
    Device,
    DeviceError,
    available_cpus,
    choose_device,
    confirm_device,
    open_session,
    serving_defaults,
)

needs_no_cuda = pytest.mark.skipif(
    CUDA in ort.get_available_providers(), reason="this onnxruntime has CUDA: the CPU-only behaviour is not observable"
)


def a_cpu_session(lite0_dir: Path) -> ort.InferenceSession:
    layer = read_manifest(lite0_dir).layers[0]
    return open_session(lite0_dir / layer.step_graph, Device("cpu", "cpu"))


@needs_no_cuda
def test_auto_takes_the_cpu_when_onnxruntime_has_no_cuda() -> None:
    assert choose_device("auto") == Device("cpu", "auto")


@needs_no_cuda
def test_demanding_cuda_without_it_says_what_to_install() -> None:
    with pytest.raises(DeviceError, match=r"pip install 'dreamstream\[gpu\]'"):
        choose_device("cuda")


def test_an_unknown_device_is_refused() -> None:
    with pytest.raises(DeviceError, match="choose one of auto, cuda, cpu"):
        choose_device("tpu")


def test_a_session_that_fell_back_from_cuda_is_taken_for_the_cpu_under_auto(lite0_dir: Path) -> None:
    # ONNX Runtime falls back silently when CUDA cannot load: the session then lists
    # only the CPU provider, as this real CPU session does.
    session = a_cpu_session(lite0_dir)
    assert confirm_device(session, Device("cuda", "auto")) == Device("cpu", "auto")


def test_a_session_that_fell_back_from_cuda_is_an_error_when_cuda_was_demanded(lite0_dir: Path) -> None:
    with pytest.raises(DeviceError, match="could not load CUDA"):
        confirm_device(a_cpu_session(lite0_dir), Device("cuda", "cuda"))


def test_sessions_use_the_thread_count_asked_for(lite0_dir: Path) -> None:
    layer = read_manifest(lite0_dir).layers[0]
    session = open_session(lite0_dir / layer.step_graph, choose_device("cpu", threads=1))
    assert session.get_session_options().intra_op_num_threads == 1


def test_a_negative_thread_count_is_refused() -> None:
    with pytest.raises(DeviceError, match="-2 threads"):
        choose_device("cpu", threads=-2)


def test_the_serving_defaults_run_a_dream_per_cpu_on_the_cpus_shared_out() -> None:
    # measured: README, "Serving under concurrency"
    assert serving_defaults(1, on_gpu=False) == (1, SHARED_THREADS)
    assert serving_defaults(2, on_gpu=False) == (2, SHARED_THREADS)  # a 2-core replica
    assert serving_defaults(8, on_gpu=False) == (8, SHARED_THREADS)  # an 8-core one
    assert serving_defaults(8, on_gpu=False, max_concurrent=4) == (4, SHARED_THREADS)
    assert serving_defaults(8, on_gpu=False, max_concurrent=2, threads=3) == (2, 3)  # as given
    assert serving_defaults(4, on_gpu=False, threads=4) == (1, 4)  # the threads given fill the CPUs
    assert serving_defaults(3, on_gpu=False, threads=2) == (1, 2)  # never 0 dreams
    assert serving_defaults(8, on_gpu=True) == (1, 8)  # one dream at a time on the device, its host work on all


def test_a_lone_dream_takes_every_cpu_and_dreams_running_together_share_them() -> None:
    share = CpuShare(8)
    assert share.threads() == 8  # no dream running: an octave starting now is alone
    with share.dreaming():
        assert share.threads() == 8
        with share.dreaming():
            assert share.threads() == 4
            with share.dreaming():
                assert (share.running, share.threads()) == (3, 2)  # 8 // 3 rounded down to a power of two
                with share.dreaming(), share.dreaming():
                    assert share.threads() == 1
        assert share.threads() == 8  # the others ended: all CPUs again
    assert share.running == 0
    three = CpuShare(3)
    assert three.threads() == 3  # alone: every CPU
    with three.dreaming(), three.dreaming():
        assert three.threads() == 1  # 3 // 2 rounded down to a power of two: few sessions per graph
    six = CpuShare(6)
    with six.dreaming(), six.dreaming():
        assert six.threads() == 2


def test_threads_given_are_kept_whatever_runs() -> None:
    share = CpuShare(8, fixed=3)
    with share.dreaming(), share.dreaming():
        assert share.threads() == 3
    with pytest.raises(ValueError, match="at least 1 CPU"):
        CpuShare(0)


def test_a_dream_that_ends_by_an_error_leaves_the_share() -> None:
    share = CpuShare(2)
    with pytest.raises(RuntimeError), share.dreaming():
        raise RuntimeError("the dream failed")
    assert share.running == 0


def test_the_available_cpus_follow_the_affinity_mask() -> None:
    # A real process pinned to one CPU (what `taskset -c 0` or a cpuset does) sees one.
    script = "import os; os.sched_setaffinity(0, {min(os.sched_getaffinity(0))}); "
    script += "from dreamstream.server.providers import available_cpus; print(available_cpus())"
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "1"
    assert 1 <= available_cpus() <= len(os.sched_getaffinity(0))


def test_sessions_draw_from_the_one_shared_cpu_arena(lite0_dir: Path) -> None:
    layers = read_manifest(lite0_dir).layers
    for layer in (layers[0], layers[-1]):
        options = open_session(lite0_dir / layer.step_graph, Device("cpu", "cpu")).get_session_options()
        assert options.enable_cpu_mem_arena
        assert options.get_session_config_entry("session.use_env_allocators") == "1"
