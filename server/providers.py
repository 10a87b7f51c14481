"""Execution providers: which device runs the graphs, verified rather than assumed.

ONNX Runtime quietly falls back to the CPU when the CUDA provider cannot load
its libraries, so a device is only trusted once a real session reports it in
`get_providers()`.
"""

from __future__ import annotations

import logging
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


def open_session(path: Path, device: Device) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.log_severity_level = 3  # errors only: the graphs' warnings are not the user's concern
    options.intra_op_num_threads = device.threads
    # Every octave has another image size, so ONNX Runtime's per-shape memory plan is
    # redone anyway; without it the peak memory of a 1024 px step is 15% lower, as fast.
    options.enable_mem_pattern = False
    # ONNX Runtime's CPU arena keeps each session's peak for good; with a session per
    # layer graph, a mix of dreams would hold the sum of their peaks. Without it, a step's
    # memory goes back when the step ends, so the server's memory budget holds.
    options.enable_cpu_mem_arena = False
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
