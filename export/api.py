"""Export a backbone into a model directory the server can load.

A model directory holds `manifest.json`, `weights.bin` (every parameter, once)
and, for each cut, a gradient graph and a fused ascent step graph, all reading
their parameters from `weights.bin` as ONNX external data. The graphs sit beside
the weights file because ONNX Runtime refuses external data outside a model's
own directory.
"""

from __future__ import annotations

import dataclasses
import re
import shutil
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
from onnx import external_data_helper

from dreamstream.export import dream
from dreamstream.export.autodiff import GradientError
from dreamstream.export.backbone import Backbone
from dreamstream.export.backbones import RECIPES
from dreamstream.export.backbones.source import WeightSource
from dreamstream.export.classify import (
    CLASSIFIER_FILE,
    IMAGENET_SIZE,
    LABELS_FILE,
    build_classifier_graph,
    write_labels,
)
from dreamstream.export.graph import DERIVED_PREFIX, OPSET
from dreamstream.export.sizes import SizeProbeError, WorkingSizes, working_sizes
from dreamstream.export.weights import read_weights, sha256_of
from dreamstream.modeldir import (
    Classifier,
    Layer,
    Manifest,
    write_manifest,
)

WEIGHTS_FILE = "weights.bin"
_ALIGNMENT = 64


class ExportError(ValueError):
    """The user asked for something the export tool cannot do (unknown backbone, bad options)."""


@dataclass(frozen=True)
class OnnxOptions:
    """How to use a user's own ONNX classifier (`dreamstream export onnx`)."""

    path: Path
    layers: Sequence[str]
    mean: tuple[float, float, float] = (0.0, 0.0, 0.0)
    std: tuple[float, float, float] = (1.0, 1.0, 1.0)
    bgr: bool = False
    scale: float = 1.0


def backbone_names() -> list[str]:
    return [*RECIPES, "onnx"]


def load_backbone(
    backbone: str,
    weights: Path | None = None,
    random_weights: bool = False,
    seed: int = 0,
    onnx_options: OnnxOptions | None = None,
) -> Backbone:
    """The named backbone's forward graph with its parameters."""
    if backbone == "onnx":
        if onnx_options is None:
            raise ExportError("export onnx needs --onnx FILE and --layers T1,T2,...")
        from dreamstream.export.backbones.onnx_file import load_onnx_backbone

        return load_onnx_backbone(onnx_options)
    recipe = RECIPES.get(backbone)
    if recipe is None:
        raise ExportError(f"unknown backbone {backbone!r}; known: {', '.join(backbone_names())}")
    if random_weights:
        return recipe.build(WeightSource.random(seed))
    path = weights
    if path is None:
        if recipe.default_weights is None:
            raise ExportError(
                f"{backbone} needs --weights FILE ({recipe.weights_help}) or --random-weights for testing"
            )
        path = recipe.default_weights()
    path = Path(path)
    if not path.is_file():
        raise ExportError(f"weights file {path} does not exist")
    backbone_model = recipe.build(WeightSource.from_arrays(read_weights(path), path.name))
    backbone_model.source.update({"weights_file": path.name, "weights_file_sha256": sha256_of(path)})
    return backbone_model


def export_model(
    backbone: str,
    out_dir: Path,
    name: str | None = None,
    weights: Path | None = None,
    random_weights: bool = False,
    seed: int = 0,
    onnx_options: OnnxOptions | None = None,
) -> Path:
    """Export `backbone` to `out_dir/name` (name defaults to the backbone's); returns that directory.

    The directory is written beside its final place and moved there at the end, so
    a failed export leaves any earlier export of the same name untouched.
    """
    model = load_backbone(backbone, weights, random_weights, seed, onnx_options)
    name = name or backbone
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]*", name):
        raise ExportError(f"model name {name!r}: use letters, digits, '.', '_' and '-'")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{name}-", dir=out_dir))
    try:
        _write_or_refuse(model, staging, name, backbone)
        final = out_dir / name
        if final.exists():
            shutil.rmtree(final)
        staging.chmod(0o755)  # mkdtemp makes it private; the server may run as another user
        staging.rename(final)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return final


def _write_or_refuse(model: Backbone, model_dir: Path, name: str, backbone: str) -> Manifest:
    """write_model_dir, with what the reverse pass, onnx.checker or ONNX Runtime refuse as an ExportError."""
    try:
        return write_model_dir(model, model_dir, name, backbone)
    except GradientError as error:
        raise ExportError(
            f"{error}. Dream on layers before that node (`dreamstream layers --onnx FILE` lists the candidates), "
            "or export the network without that op"
        ) from error
    except onnx.checker.ValidationError as error:
        raise ExportError(f"the gradient graph of {model.name} is not valid ONNX: {error}") from error


def write_model_dir(model: Backbone, model_dir: Path, name: str, backbone: str) -> Manifest:
    prepared = dream.prepare(model)
    weights = _write_weights(model, model_dir / WEIGHTS_FILE)
    layers: list[Layer] = []
    channel_offset = 0
    deepest_graph = None
    for number, group in enumerate(dream.cut_groups(model.layers)):
        last = group[-1]
        stem = f"{number:02d}_{_file_safe(model.layers[last].name)}"
        files = {kind: f"{stem}{kind}.onnx" for kind in ("", ".step", ".focus", ".focus.step", ".guide")}
        up_to_group = list(range(last + 1))
        _save(dream.build_gradient_graph(prepared, up_to_group), model_dir / files[""], weights)
        _save(dream.build_step_graph(prepared, up_to_group), model_dir / files[".step"], weights)
        _save(dream.build_gradient_graph(prepared, group), model_dir / files[".focus"], weights)
        _save(dream.build_step_graph(prepared, group), model_dir / files[".focus.step"], weights)
        _save(dream.build_guide_graph(prepared, group), model_dir / files[".guide"], weights)
        deepest_graph = model_dir / files[""]
        for index in group:
            layer = model.layers[index]
            layers.append(
                Layer(
                    name=layer.name,
                    channels=layer.channels,
                    stride=layer.stride,
                    graph=files[""],
                    step_graph=files[".step"],
                    channel_offset=channel_offset,
                    group=model.layers[last].name,
                    focus_graph=files[".focus"],
                    focus_step_graph=files[".focus.step"],
                    guide_graph=files[".guide"],
                )
            )
            channel_offset += layer.channels

    classifier = None
    if model.logits is not None:
        _save(build_classifier_graph(prepared), model_dir / CLASSIFIER_FILE, weights)
        write_labels(model_dir / LABELS_FILE)
        classifier = Classifier(CLASSIFIER_FILE, LABELS_FILE, IMAGENET_SIZE)
    sizes = _working_sizes(deepest_graph, len(layers), channel_offset, model.declared_size)
    # ONNX Runtime pools a too-small input to a 1-pixel output instead of failing, so the
    # deepest layer's stride (input pixels per activation pixel) is a floor too.
    min_size = sizes.lifted_to(max(sizes.smallest, layers[-1].stride))
    manifest = Manifest(
        name=name,
        backbone=backbone,
        layers=tuple(layers),
        default_layers=dict(model.default_layers),
        min_size=min_size,
        max_size=model.max_size,
        weights_file=WEIGHTS_FILE,
        weights_sha256=sha256_of(model_dir / WEIGHTS_FILE),
        preprocessing=model.preprocessing,
        opset=OPSET,
        source=dict(model.source),
        fixed_size=sizes.fixed,
        size_step=sizes.step,
        classifier=classifier,
    )
    # Every file hashed once written, so that a server checks each before use.
    hashes = {relative: sha256_of(model_dir / relative) for relative in manifest.served_files()}
    manifest = dataclasses.replace(manifest, files_sha256=hashes)
    write_manifest(model_dir, manifest)
    return manifest


def _file_safe(layer_name: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", layer_name)


class _WeightsFile:
    """weights.bin: every parameter once, 64-byte aligned, each graph pointing into it.

    Besides the backbone's parameters, the reverse pass derives a few constant tensors
    from them (flipped kernels, LRN's channel band) under names starting DERIVED_PREFIX;
    they are appended the first time a graph uses them, so graphs share those too.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self.offsets: dict[str, tuple[int, int]] = {}
        path.write_bytes(b"")

    def add(self, name: str, array: np.ndarray) -> None:
        data = np.ascontiguousarray(array, dtype=np.float32).tobytes()
        with open(self.path, "ab") as out:
            position = out.tell()
            padding = (-position) % _ALIGNMENT
            out.write(b"\0" * padding)
            out.write(data)
        self.offsets[name] = (position + padding, len(data))

    def externalize(self, graph: onnx.ModelProto) -> None:
        """Point the graph's parameters into this file instead of holding them."""
        for tensor in graph.graph.initializer:
            if tensor.name not in self.offsets:
                if not tensor.name.startswith(DERIVED_PREFIX):
                    continue
                self.add(tensor.name, onnx.numpy_helper.to_array(tensor))
            offset, length = self.offsets[tensor.name]
            external_data_helper.set_external_data(tensor, WEIGHTS_FILE, offset, length)
            tensor.data_location = onnx.TensorProto.EXTERNAL
            tensor.ClearField("raw_data")


def _write_weights(model: Backbone, path: Path) -> _WeightsFile:
    weights = _WeightsFile(path)
    for tensor in model.forward.graph.initializer:
        if tensor.name in model.weight_names:
            weights.add(tensor.name, onnx.numpy_helper.to_array(tensor))
    return weights


def _save(graph: onnx.ModelProto, path: Path, weights: _WeightsFile) -> None:
    onnx.checker.check_model(graph, full_check=True)
    weights.externalize(graph)
    onnx.save_model(graph, str(path))


def _working_sizes(graph_path: Path, layer_count: int, channel_total: int, declared: int | None) -> WorkingSizes:
    """The sizes the deepest graph runs on (see `sizes`), or an ExportError saying why none."""
    try:
        return working_sizes(graph_path, layer_count, channel_total, declared)
    except SizeProbeError as error:
        raise ExportError(str(error)) from error
