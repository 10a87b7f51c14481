"""The model repository: the exported models in one directory, and their sessions.

Each model directory (see `dreamstream.modeldir`) holds dozens of graphs,
one gradient graph and one step graph per layer, so sessions are opened on first
use and then kept: a session is created once per graph and thread count (on the CPU a
dream's step takes its share of the CPUs, see providers.CpuShare) and shared by every
request (ONNX Runtime sessions are safe to run from several threads).

A model folder is trusted no further than it proves (see `model_files`: every file
inside the folder and matching its sha256, graphs reading only the weights file).
A model that fails is refused with one log line and the others serve.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator, Mapping
from dataclasses import replace
from pathlib import Path

import onnxruntime as ort

from dreamstream.modeldir import MANIFEST_FILE, Layer, Manifest, ManifestError, read_manifest
from dreamstream.server.model_files import ModelFileError, check_model_files
from dreamstream.server.providers import (
    CpuShare,
    Device,
    DeviceError,
    available_cpus,
    choose_device,
    confirm_device,
    open_session,
)
from dreamstream.server.refusals import ModelUnavailable, UnknownModel
from dreamstream.server.sessions import SessionCache

log = logging.getLogger(__name__)

# The embedded default (see the export tool); served when a request names no model.
DEFAULT_MODEL = "efficientnet-lite0"


class RepositoryError(RuntimeError):
    """The models directory cannot be served: missing, or holding no model that loads."""


class Model:
    """One exported model: its manifest, and a session per graph opened on first use."""

    def __init__(
        self,
        directory: Path,
        manifest: Manifest,
        device: Device,
        sessions: SessionCache | None = None,
        graph_weights: Mapping[str, int] | None = None,
        cpu: CpuShare | None = None,
    ) -> None:
        self.directory = directory
        self.manifest = manifest
        self.device = device
        self.cpu = cpu if cpu is not None else CpuShare(available_cpus(), device.threads)
        self._sessions = sessions if sessions is not None else SessionCache()
        self._graph_weights = dict(graph_weights or {})  # graph -> bytes of weights it reads

    @property
    def name(self) -> str:
        return self.manifest.name

    def session(self, graph: str, threads: int | None = None) -> ort.InferenceSession:
        """The session of `graph` (a path relative to the model directory) on `threads`, by
        default the threads a step starting now takes (see CpuShare), opened when not open."""
        path = self.directory / graph
        device = self.device
        if device.kind == "cpu":
            device = replace(device, threads=self._step_threads() if threads is None else threads)

        def opened() -> ort.InferenceSession:
            session = open_session(path, device)
            log.info("%s: opened %s on %d thread(s)", self.name, graph, device.threads)
            return session

        return self._sessions.get((path, device.threads), self._graph_weights.get(graph, 0), opened)

    def session_source(self, graph: str) -> Callable[[], ort.InferenceSession]:
        """A function giving `graph`'s session for the next step of a dream: the one it holds
        while the step's share of the CPUs stays the same (so a running dream keeps its
        session whatever the cache closes meanwhile, and takes no lock), the session of the
        new share when the share changes."""
        held: list[tuple[int, ort.InferenceSession]] = []

        def current() -> ort.InferenceSession:
            threads = self._step_threads()
            if not held or held[0][0] != threads:
                held[:] = [(threads, self.session(graph, threads))]
            return held[0][1]

        return current

    def _step_threads(self) -> int:
        return self.cpu.threads() if self.device.kind == "cpu" else self.device.threads

    @property
    def session_count(self) -> int:
        return self._sessions.count(self.directory)

    def serving_layer(self, layers: Mapping[str, float]) -> tuple[Layer, bool]:
        """The layer whose graphs serve a dream on `layers` (name -> weight, at least one
        non-zero), and whether its focus graphs do: the deepest layer with a non-zero
        weight, focused when every such layer is in its group (the focus graphs seed the
        loss of that group only, which saves a pass over every other layer)."""
        manifest = self.manifest
        selected = [manifest.layer(name) for name, weight in layers.items() if weight != 0]
        deepest = max(selected, key=lambda layer: manifest.layer_index(layer.name))
        return deepest, all(layer.group == deepest.group for layer in selected)

    def step_graph_for(self, layers: Mapping[str, float]) -> str:
        """The fused step graph that runs a dream on `layers` (name -> weight)."""
        layer, focused = self.serving_layer(layers)
        return layer.focus_step_graph if focused else layer.step_graph

    def graph_for(self, layers: Mapping[str, float]) -> str:
        """The gradient graph for `layers`, chosen as `step_graph_for` chooses."""
        layer, focused = self.serving_layer(layers)
        return layer.focus_graph if focused else layer.graph


class ModelRepository:
    """The models found in `root`, one sub-directory each, served on `device`.

    Nothing is read until `load()`, so a server can answer health checks while
    its models load.
    """

    def __init__(
        self, root: Path, device: str = "auto", threads: int | CpuShare = 0, session_budget: int | None = None
    ) -> None:
        """`threads`: per dream, or 0 for the CPUs shared out among the dreams running (or that CpuShare)."""
        self.root = Path(root)
        self.sessions = SessionCache(session_budget)  # shared by every model: one bound for the server
        self.requested_device = device
        self.cpu = threads if isinstance(threads, CpuShare) else CpuShare(available_cpus(), threads)
        self.device: Device | None = None
        self._models: dict[str, Model] = {}
        self.refused: dict[str, str] = {}  # model folder name -> why it is not served

    @property
    def loaded(self) -> bool:
        return bool(self._models)

    def load(self) -> None:
        """Check and load every model folder, choose the device, open each model's default step graph.

        A folder that fails (a manifest that does not read, a file outside the folder or
        altered, a graph ONNX Runtime cannot open) is refused and logged on one line; the
        others serve. Opening the default graphs up front makes the first dream start at
        once and proves the device: ONNX Runtime may fall back from CUDA to the CPU silently.
        """
        directories = self._model_directories()
        device = choose_device(self.requested_device, self.cpu.fixed)
        models: dict[str, Model] = {}
        for directory in directories:
            try:
                model = self._load_model(directory, device)
            except DeviceError:
                raise
            except Exception as error:  # whatever breaks one model must not stop the others
                self.refused[directory.name] = _one_line(error)
                log.error("model folder %s refused: %s", directory, _one_line(error))
                continue
            device = model.device
            models[model.name] = model
        if not models:
            problems = "; ".join(f"{name}: {problem}" for name, problem in self.refused.items())
            raise RepositoryError(f"no model in {self.root} can be served ({problems})")
        log.info("device: %s", device.describe)
        self.device = device
        self._models = models

    def _load_model(self, directory: Path, device: Device) -> Model:
        manifest = read_manifest(directory)
        graph_weights = check_model_files(directory, manifest)
        model = Model(directory, manifest, device, self.sessions, graph_weights, self.cpu)
        session = model.session(model.step_graph_for(manifest.default_layers))
        model.device = confirm_device(session, device)
        log.info(
            "model %s (%s): %d layers, default layers %s, from %s",
            manifest.name,
            manifest.backbone,
            len(manifest.layers),
            manifest.default_layers,
            directory,
        )
        return model

    def _model_directories(self) -> list[Path]:
        if not self.root.is_dir():
            raise RepositoryError(f"models directory {self.root} does not exist: {self._hint}")
        # Hidden directories are exports still being written (see export_model).
        found = [
            directory
            for directory in sorted(self.root.iterdir())
            if not directory.name.startswith(".") and (directory / MANIFEST_FILE).is_file()
        ]
        if not found:
            raise RepositoryError(f"no exported models in {self.root}: {self._hint}")
        return found

    @property
    def _hint(self) -> str:
        command = f"dreamstream export {DEFAULT_MODEL} --out {self.root}"
        return f"export one with `{command}`, or pass --models"

    def names(self) -> list[str]:
        return sorted(self._models)

    @property
    def default_name(self) -> str:
        return DEFAULT_MODEL if DEFAULT_MODEL in self._models else self.names()[0]

    def get(self, name: str = "") -> Model:
        """The model called `name`, or the default model for an empty name."""
        model = self._models.get(name or self.default_name)
        if model is None:
            if name in self.refused:
                raise ModelUnavailable(name, self.refused[name])
            raise UnknownModel(name, self.names())
        return model

    def __iter__(self) -> Iterator[Model]:
        return iter(self._models[name] for name in self.names())


def _one_line(error: Exception) -> str:
    """An error as one log line: ONNX Runtime's messages span several."""
    text = " ".join(str(error).split()) or type(error).__name__
    return text if isinstance(error, ModelFileError | ManifestError) else f"{type(error).__name__}: {text}"
