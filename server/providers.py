"""Execution providers: which device runs the graphs, verified rather than assumed.

ONNX Runtime quietly falls back to the CPU when the CUDA provider cannot load
its libraries, so a device is only trusted once a real session reports it in
`get_providers()`.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import threading
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path

import onnxruntime as ort

log = logging.getLogger(__name__)

CUDA = "CUDAExecutionProvider"
CPU = "CPUExecutionProvider"
DEVICE_CHOICES = ("auto", "cuda", "cpu")

# Every octave has a new image size; an exhaustive cuDNN algorithm search per new
# shape would cost more than the convolutions it speeds up.
_CUDA_OPTIONS = {"cudnn_conv_algo_search": "HEURISTIC"}

# Host memory: ONE CPU arena for every session of the process, shrunk (its free regions
# handed back to the system) by the Run of each octave's last step (see releasing_run).
# Chosen by `python -m benchmarks.arena` and `python -m benchmarks.step_memory` (README,
# "Memory"): without an arena every tensor of a step is malloc'ed and page-faulted anew
# (+23 % a 512 px step); a session's own arena keeps its peak for good, so a mix of dreams
# on several layer graphs would hold the sum of their peaks; one shared arena holds at
# most what the dreams running together need, and shrinking at each octave's end gives it
# back before the next, larger octave. Shrinking after every Run costs the speed back.
# Growing by powers of two (ONNX Runtime's default) packs a step into fewer, larger regions:
# a 1024 px googlenet-bvlc step peaks at 1125 MiB, against 1456 MiB growing by exactly
# what is asked (kSameAsRequested), where freed chunks of separate regions never coalesce.
_ARENA_EXTEND_STRATEGY = 0  # kNextPowerOfTwo; 1 is kSameAsRequested
_SHRINK_ARENA = "memory.enable_memory_arena_shrinkage"


def available_cpus() -> int:
    """The CPUs this process may use: its affinity mask, capped by a cgroup v2 CPU quota (a
    container's CPU limit; rounded down, as threads beyond a quota are throttled, not run)."""
    try:
        cpus = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        cpus = os.cpu_count() or 1
    try:
        quota, period = Path("/sys/fs/cgroup/cpu.max").read_text().split()
        if quota != "max":
            cpus = min(cpus, max(1, int(quota) // int(period)))
    except (OSError, ValueError):
        pass
    return cpus


# `--threads 0`, the default: each step of a dream runs on the CPUs shared out among the
# dreams running when the step starts (see CpuShare).
SHARED_THREADS = 0


def serving_defaults(cpus: int, on_gpu: bool, max_concurrent: int | None = None, threads: int = 0) -> tuple[int, int]:
    """(dreams at once, threads per dream) for `cpus` CPUs, each left as given when given;
    threads SHARED_THREADS (0) when each step takes its share of the CPUs then (CpuShare).

    On the CPU: a dream per CPU (per `threads` CPUs when given) and, unless `threads` is
    given, the CPUs shared out among the dreams running: a lone dream on every CPU, two on
    half each. Measured by `python -m benchmarks.concurrency` (README, "Serving under
    concurrency"): on 2 cores a lone stream is served fastest by one dream on both threads,
    but from two streams on, two one-thread dreams at once give more dreams a second and the
    waiting streams their first frame far sooner than a queue for one two-thread dream; the
    share gives each case its best. With `max_concurrent` given and not `threads`, the CPUs
    are shared out the same way.
    On a GPU one dream at a time (the device runs one graph at a time anyway), its host
    work on every CPU.
    """
    if on_gpu:
        concurrent = max_concurrent or 1
        return concurrent, threads or max(1, cpus // concurrent)
    concurrent = max_concurrent or max(1, cpus // (threads or 1))
    return concurrent, threads


class CpuShare:
    """The threads the next step of a dream runs on: `fixed` when given, else the CPUs
    shared out among the dreams running at that moment.

    ONNX Runtime fixes a session's threads when it opens it, so a graph has a session per
    thread count it has run with (see models.Model.session); a share below all the CPUs is
    rounded down to a power of two to keep those few (8, 4, 2, 1 on 8 CPUs; 6, 2, 1 on 6).
    A share is taken per step, not per dream: a dream that began alone gives half its CPUs
    back at its next step when a second dream starts, and takes them again when that one
    ends. A dream paused between two steps (its reader slow) still counts.
    """

    def __init__(self, cpus: int, fixed: int = 0) -> None:
        if cpus < 1 or fixed < 0:
            raise ValueError(f"{cpus} CPUs, {fixed} fixed threads: need at least 1 CPU and 0 or more threads")
        self.cpus = cpus
        self.fixed = fixed
        self._running = 0
        self._lock = threading.Lock()

    @property
    def shared(self) -> bool:
        return self.fixed == SHARED_THREADS

    @property
    def running(self) -> int:
        """Dreams inside `dreaming()` now."""
        return self._running

    def threads(self) -> int:
        """Threads for a step starting now (a caller outside `dreaming()` counts as a dream of its own)."""
        if not self.shared:
            return self.fixed
        share = max(1, self.cpus // max(1, self._running))
        return share if share == self.cpus else 1 << (share.bit_length() - 1)

    @contextlib.contextmanager
    def dreaming(self) -> Iterator[None]:
        """Counts the caller among the dreams running, for as long as the block runs."""
        with self._lock:
            self._running += 1
        try:
            yield
        finally:
            with self._lock:
                self._running -= 1


def gpu_expected(requested: str) -> bool:
    """Whether `requested` (auto, cuda or cpu) will run on CUDA if it loads: for the defaults
    that are chosen before any session proves the device."""
    return requested != "cpu" and CUDA in ort.get_available_providers()


class DeviceError(RuntimeError):
    """The requested device cannot run here."""


@dataclass(frozen=True)
class Device:
    """Where sessions run: `kind` is "cuda" or "cpu"."""

    kind: str
    requested: str  # what the user asked for: auto, cuda or cpu
    # Threads per session for one operator; 0 lets ONNX Runtime use one per physical core,
    # which oversubscribes a container whose CPU limit is below the host's core count.
    threads: int = 0

    @property
    def providers(self) -> list[str | tuple[str, dict[str, str]]]:
        if self.kind == "cuda":
            return [(CUDA, _CUDA_OPTIONS), CPU]
        return [CPU]

    @property
    def describe(self) -> str:
        return "CUDA (CUDAExecutionProvider)" if self.kind == "cuda" else "CPU (CPUExecutionProvider)"


def choose_device(requested: str, threads: int = 0) -> Device:
    """The device to try for `requested` (auto, cuda or cpu), before any session proves it."""
    if requested not in DEVICE_CHOICES:
        raise DeviceError(f"unknown device {requested!r}: choose one of {', '.join(DEVICE_CHOICES)}")
    if threads < 0:
        raise DeviceError(f"{threads} threads: use 0 (one per core) or more")
    if requested == "cpu":
        return Device("cpu", requested, threads)
    if CUDA in ort.get_available_providers():
        # onnxruntime-gpu finds the CUDA and cuDNN libraries of the nvidia-* wheels only
        # when they are loaded first.
        if hasattr(ort, "preload_dlls"):
            ort.preload_dlls()
        return Device("cuda", requested, threads)
    if requested == "cuda":
        raise DeviceError(
            "--device cuda, but this onnxruntime has no CUDAExecutionProvider: "
            "install onnxruntime-gpu (pip install 'dreamstream[gpu]') or use --device cpu"
        )
    return Device("cpu", requested, threads)


_ARENA_LOCK = threading.Lock()


def _shared_cpu_arena() -> None:
    """Register the process's one CPU arena with ONNX Runtime, once (sessions opt in)."""
    with _ARENA_LOCK:  # two sessions opening at once: the second finds it in the cache
        _register_shared_cpu_arena()


@functools.cache
def _register_shared_cpu_arena() -> None:
    memory = ort.OrtMemoryInfo("Cpu", ort.OrtAllocatorType.ORT_ARENA_ALLOCATOR, 0, ort.OrtMemType.DEFAULT)
    # max_mem 0: no cap of its own (the server's memory budget is the cap); -1: ONNX Runtime's defaults.
    ort.create_and_register_allocator(memory, ort.OrtArenaCfg(0, _ARENA_EXTEND_STRATEGY, -1, -1))


@functools.cache
def releasing_run() -> ort.RunOptions:
    """Run options whose Run, at its end, hands the CPU arena's free regions back to the system."""
    options = ort.RunOptions()
    options.add_run_config_entry(_SHRINK_ARENA, "cpu:0")
    return options


def open_session(path: Path, device: Device) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.log_severity_level = 3  # errors only: the graphs' warnings are not the user's concern
    options.intra_op_num_threads = device.threads
    # Every octave has another image size, so ONNX Runtime's per-shape memory plan is
    # redone anyway; without it the peak memory of a 1024 px step is 15% lower, as fast.
    options.enable_mem_pattern = False
    # The shared arena (see _ARENA_EXTEND_STRATEGY) instead of one per session.
    _shared_cpu_arena()
    options.enable_cpu_mem_arena = True
    options.add_session_config_entry("session.use_env_allocators", "1")
    return ort.InferenceSession(str(path), sess_options=options, providers=device.providers)


def confirm_device(session: ort.InferenceSession, device: Device) -> Device:
    """The device `session` really runs on; raises when CUDA was demanded but did not load."""
    if device.kind == "cuda" and CUDA not in session.get_providers():
        if device.requested == "cuda":
            raise DeviceError(
                "--device cuda, but ONNX Runtime could not load CUDA (see its log above); "
                "check the CUDA and cuDNN libraries or use --device cpu"
            )
        log.warning("CUDA is installed but did not load; falling back to the CPU")
        return replace(device, kind="cpu")
    return device
