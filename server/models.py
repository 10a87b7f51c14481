"""The model repository: the exported models in one directory, and their sessions.

Each model directory (see `dreamstream.modeldir`) holds dozens of graphs,
one gradient graph and one step graph per layer, so sessions are opened on first
use and then kept: a session is created once per graph and shared by every
request (ONNX Runtime sessions are safe to run from several threads).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator, Mapping
from pathlib import Path

import onnxruntime as ort

from dreamstream.modeldir import MANIFEST_FILE, Layer, Manifest, ManifestError, read_manifest
from dreamstream.server.providers import Device, choose_device, confirm_device, open_session
from dreamstream.server.refusals import UnknownModel

log = logging.getLogger(__name__)

# The embedded default (see the export tool); served when a request names no model.
DEFAULT_MODEL = "efficientnet-lite0"


class RepositoryError(RuntimeError):
    """The models directory cannot be served: empty, or holding a broken model."""


class Model:
    """One exported model: its manifest, and a session per graph opened on first use."""

    def __init__(self, directory: Path, manifest: Manifest, device: Device) -> None:
        self.directory = directory
        self.manifest = manifest
        self.device = device
        self._sessions: dict[str, ort.InferenceSession] = {}
        # Opening a session takes a second or more; two requests wanting the same new
        # graph must not open it twice.
        self._lock = threading.Lock()

    @property
    def name(self) -> str:
        return self.manifest.name

    def session(self, graph: str) -> ort.InferenceSession:
        """The session of `graph` (a path relative to the model directory), opened once."""
        with self._lock:
            session = self._sessions.get(graph)
            if session is None:
                session = open_session(self.directory / graph, self.device)
                self._sessions[graph] = session
                log.info("%s: opened %s", self.name, graph)
            return session

    @property
    def session_count(self) -> int:
        return len(self._sessions)

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

    def __init__(self, root: Path, device: str = "auto", threads: int = 0) -> None:
        self.root = Path(root)
        self.requested_device = device
        self.threads = threads
        self.device: Device | None = None
        self._models: dict[str, Model] = {}

    @property
    def loaded(self) -> bool:
        return bool(self._models)

    def load(self) -> None:
        """Read every manifest, choose the device, and open each model's default step graph.

        Opening the default graphs up front makes the first dream start at once and
        proves the device: ONNX Runtime may fall back from CUDA to the CPU silently.
        """
        manifests = self._read_manifests()
        device = choose_device(self.requested_device, self.threads)
        models: dict[str, Model] = {}
        for directory, manifest in manifests:
            model = Model(directory, manifest, device)
            session = model.session(model.step_graph_for(manifest.default_layers))
            device = model.device = confirm_device(session, device)
            models[manifest.name] = model
            log.info(
                "model %s (%s): %d layers, default layers %s, from %s",
                manifest.name,
                manifest.backbone,
                len(manifest.layers),
                manifest.default_layers,
                directory,
            )
        log.info("device: %s", device.describe)
        self.device = device
        self._models = models

    def _read_manifests(self) -> list[tuple[Path, Manifest]]:
        if not self.root.is_dir():
            raise RepositoryError(f"models directory {self.root} does not exist: {self._hint}")
        found = []
        for directory in sorted(self.root.iterdir()):
            # Hidden directories are exports still being written (see export_model).
            if directory.name.startswith(".") or not (directory / MANIFEST_FILE).is_file():
                continue
            try:
                manifest = read_manifest(directory)
            except ManifestError as error:
                raise RepositoryError(f"{directory}: {error}") from error
            for layer in manifest.layers:
                for graph in (layer.graph, layer.step_graph, layer.focus_graph, layer.focus_step_graph):
                    if not (directory / graph).is_file():
                        raise RepositoryError(f"{directory}: graph {graph} is missing: re-export it")
            found.append((directory, manifest))
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
            raise UnknownModel(name, self.names())
        return model

    def __iter__(self) -> Iterator[Model]:
        return iter(self._models[name] for name in self.names())
