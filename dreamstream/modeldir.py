"""The model-directory contract: what the export tool writes and the server reads.

A model directory holds `manifest.json`, the ONNX graphs of every layer group
(all of them reading one external weights file), and nothing else the server
needs. This module is the whole contract between export and serving: the
manifest's fields, the format version, and the names of the graphs' inputs and
outputs. It depends on the standard library alone, and imports neither the
export tool nor the server; which graph serves a request is the server's
decision (`dreamstream.server.engine.plan`).

Every graph of a model has the same interface (see `GRAPH_INPUTS` and
`GRAPH_OUTPUTS`): `layer_weights` has one entry per manifest layer and
`channel_weights` one per channel of every manifest layer, in manifest order.

Layers come in groups (an inception block's branches and output, say; most
layers are a group of their own), and each group has two pairs of graphs (a
gradient graph and a fused step graph each):
- `graph` / `step_graph`: the loss over every layer up to the end of the group.
  Weights of deeper layers are ignored and their `channel_means` columns are zero.
- `focus_graph` / `focus_step_graph`: the loss over the group's own layers only,
  with the same interface; the weights of all other layers are ignored. Seeding
  the loss of dozens of unselected layers costs a full pass over each of their
  activations, so this is the fast path for the common dream on one layer.
The server chooses between them for each dream.

Each group also has a `guide_graph`: the focus gradient graph with one more input,
`guide` (a picture), and google/deepdream's guided objective instead of the L2
one: every position of a layer's activation is pulled towards the guide's
feature (at the same layer) it matches best, the one with the largest dot
product. Models exported before guided dreams have none (`guide_graph` is "");
the server refuses a guide for them.

A model whose weights have their ImageNet classifier head also has a `classifier`
graph (input `image`, output `probabilities`: the softmax over the classes) and a
labels file, one class name per line in the order of the outputs. Models without
one have `classifier` None.

`files_sha256` holds the sha256 of every file the folder serves from (`served_files`:
the graphs, the weights, the classifier graph and its labels), so that a server can
check each one before use. Manifests written before it have none (an empty mapping).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

MANIFEST_FILE = "manifest.json"
FORMAT = "dreamstream.model/1"

# Names of the gradient graphs' inputs and outputs (the graph contract).
IMAGE = "image"  # float32 [N,3,H,W], RGB in [0,1]
LAYER_WEIGHTS = "layer_weights"  # float32 [L]
CHANNEL_WEIGHTS = "channel_weights"  # float32 [C_total]
LOSS = "loss"  # float32 [N]
GRAD = "grad"  # float32 [N,3,H,W], d loss / d image
CHANNEL_MEANS = "channel_means"  # float32 [N,C_total]
GRAPH_INPUTS = (IMAGE, LAYER_WEIGHTS, CHANNEL_WEIGHTS)
GRAPH_OUTPUTS = (LOSS, GRAD, CHANNEL_MEANS)
# The guide graph's extra input: the guide picture, float32 [1,3,h,w] RGB in [0,1], of any
# size the network takes. Its activations are computed inside the graph, and the best match
# of each position is taken as a constant (the gradient does not flow into the guide).
GUIDE = "guide"
GUIDE_INPUTS = (*GRAPH_INPUTS, GUIDE)

# The fused ascent step graph: one Run is one whole DeepDream step, so on a GPU the
# image can stay on the device for a whole octave. It rolls the image by `shift`
# (jitter), takes the gradient, rolls it back, normalises it by its mean absolute
# value per image, adds `step_size` times it and clips to [0,1].
SHIFT = "shift"  # int64 [2]: (dy, dx) roll applied before the gradient, undone after; 0 <= dy < H, 0 <= dx < W
STEP_SIZE = "step_size"  # float32 [1]
IMAGE_OUT = "image_out"  # float32 [N,3,H,W], the image after the step
STEP_INPUTS = (IMAGE, LAYER_WEIGHTS, CHANNEL_WEIGHTS, SHIFT, STEP_SIZE)
STEP_OUTPUTS = (IMAGE_OUT, LOSS)

# The classifier graph: the picture in (any size the network takes; see Classifier.size),
# one probability per class out.
PROBABILITIES = "probabilities"  # float32 [N,K], the softmax of the class scores
CLASSIFIER_INPUTS = (IMAGE,)
CLASSIFIER_OUTPUTS = (PROBABILITIES,)


class ManifestError(ValueError):
    """A manifest is missing, malformed, or of a format this version cannot read."""


@dataclass(frozen=True)
class Layer:
    """One layer a user can dream on."""

    name: str  # as the backbone names it, e.g. "inception_4c/output"
    channels: int
    stride: int  # spatial stride against the input image (input pixels per activation pixel)
    graph: str  # gradient graph (GRAPH_*), relative to the model dir: loss over every layer up to this group
    step_graph: str  # fused ascent step graph (STEP_*) for the same cut
    channel_offset: int  # where this layer's channels start in channel_weights / channel_means
    group: str  # layers of one group share their graphs
    focus_graph: str  # gradient graph with the loss over this layer's group only
    focus_step_graph: str  # fused ascent step graph, loss over this layer's group only
    guide_graph: str = ""  # gradient graph (GUIDE_INPUTS) with the guided loss over this layer's group; "": none


@dataclass(frozen=True)
class Preprocessing:
    """How the graph turns RGB in [0,1] into the backbone's input (done inside the graph)."""

    mean: tuple[float, float, float]  # in the backbone's channel order, after scaling
    std: tuple[float, float, float]
    bgr: bool
    scale: float  # the backbone's pixel range: 1.0 for [0,1], 255.0 for [0,255]


@dataclass(frozen=True)
class Classifier:
    """The model's classifier head, exported as a graph of its own (CLASSIFIER_INPUTS/OUTPUTS)."""

    graph: str  # relative to the model dir
    labels: str  # text file relative to the model dir: one class name per line, in output order
    size: int  # the square side the network was trained to classify at; pictures are resized to it


@dataclass(frozen=True)
class Manifest:
    name: str
    backbone: str
    layers: tuple[Layer, ...]
    default_layers: dict[str, float]
    min_size: int  # smallest image side the deepest layer accepts
    max_size: int  # largest image side recommended in one piece
    weights_file: str
    weights_sha256: str
    preprocessing: Preprocessing
    opset: int
    format: str = FORMAT
    source: dict[str, str] = field(default_factory=dict)  # where the weights came from
    # > 0: the graphs run only on pictures of exactly fixed_size x fixed_size (the network was
    # exported with fixed shapes, say a reshape to 7x7); such a model is dreamed in tiles of that size.
    fixed_size: int = 0
    classifier: Classifier | None = None  # None: the weights had no classifier head
    # Relative path -> hex sha256 of every file in served_files(); empty in manifests older than it.
    files_sha256: dict[str, str] = field(default_factory=dict)
    # > 1: the graphs run only on sides of min_size + k * size_step px (branches that line up
    # only at some sizes, say pools that round differently); servers dream each octave at such
    # a size. Manifests written before it have none: every side from min_size runs.
    size_step: int = 1

    def served_files(self) -> tuple[str, ...]:
        """Every file (relative to the model dir) the server reads: graphs, weights, classifier, labels."""
        files = [
            graph
            for layer in self.layers
            for graph in (layer.graph, layer.step_graph, layer.focus_graph, layer.focus_step_graph, layer.guide_graph)
            if graph  # an older export has no guide graph
        ]
        if self.classifier is not None:
            files += [self.classifier.graph, self.classifier.labels]
        files.append(self.weights_file)
        return tuple(dict.fromkeys(files))  # once each, in manifest order

    @property
    def channel_total(self) -> int:
        return sum(layer.channels for layer in self.layers)

    def layer(self, name: str) -> Layer:
        for layer in self.layers:
            if layer.name == name:
                return layer
        raise KeyError(name)

    def layer_index(self, name: str) -> int:
        for index, layer in enumerate(self.layers):
            if layer.name == name:
                return index
        raise KeyError(name)

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2) + "\n"

    @classmethod
    def from_json(cls, text: str) -> Manifest:
        try:
            raw = json.loads(text)
            if raw.get("format") != FORMAT:
                raise ManifestError(f"manifest format {raw.get('format')!r} is not {FORMAT!r}: re-export the model")
            layers = tuple(Layer(**layer) for layer in raw.pop("layers"))
            prep = raw.pop("preprocessing")
            preprocessing = Preprocessing(
                mean=tuple(prep["mean"]), std=tuple(prep["std"]), bgr=prep["bgr"], scale=prep["scale"]
            )
            classifier = raw.pop("classifier", None)
            return cls(
                layers=layers,
                preprocessing=preprocessing,
                classifier=Classifier(**classifier) if classifier else None,
                **raw,
            )
        except (KeyError, TypeError, json.JSONDecodeError) as error:
            raise ManifestError(f"malformed manifest: {error}") from error


def write_manifest(model_dir: Path, manifest: Manifest) -> Path:
    path = Path(model_dir) / MANIFEST_FILE
    path.write_text(manifest.to_json())
    return path


def read_manifest(model_dir: Path) -> Manifest:
    path = Path(model_dir) / MANIFEST_FILE
    if not path.is_file():
        raise ManifestError(f"{model_dir} holds no {MANIFEST_FILE}: is it an exported model?")
    return Manifest.from_json(path.read_text())
