"""The torchvision recipes (vgg16, vgg19, resnet50, inception-v3, googlenet).

Each exports with random weights and lists torchvision's layers; each reads a
torchvision state-dict file (written with torch.save, auxiliary classifiers
included, as the real downloads are) through --weights; a missing or mis-shaped
key is named; and the exported gradient graphs agree with torch autograd on the
PyTorch references in `reference_models.py`, loaded with the same state dict.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import torch
from conftest import assert_graphs_pass_checker_and_cuda_audit
from reference_models import build_reference, layer_names, random_state_dict, save_state_dict

from dreamstream.export.api import export_model
from dreamstream.export.weights import WeightsError, sha256_of

SEED = 7
TOLERANCE = 1e-4  # max |ours - torch| / max |torch|, our float32 against torch's float64

# (name, channels, cumulative stride) of every dream layer, in forward order.
VGG16_LAYERS = [
    *[("conv1_1", 64, 1), ("conv1_2", 64, 1), ("pool1", 64, 2)],
    *[("conv2_1", 128, 2), ("conv2_2", 128, 2), ("pool2", 128, 4)],
    *[("conv3_1", 256, 4), ("conv3_2", 256, 4), ("conv3_3", 256, 4), ("pool3", 256, 8)],
    *[("conv4_1", 512, 8), ("conv4_2", 512, 8), ("conv4_3", 512, 8), ("pool4", 512, 16)],
    *[("conv5_1", 512, 16), ("conv5_2", 512, 16), ("conv5_3", 512, 16), ("pool5", 512, 32)],
]
VGG19_LAYERS = [
    *[("conv1_1", 64, 1), ("conv1_2", 64, 1), ("pool1", 64, 2)],
    *[("conv2_1", 128, 2), ("conv2_2", 128, 2), ("pool2", 128, 4)],
    *[("conv3_1", 256, 4), ("conv3_2", 256, 4), ("conv3_3", 256, 4), ("conv3_4", 256, 4)],
    ("pool3", 256, 8),
    *[("conv4_1", 512, 8), ("conv4_2", 512, 8), ("conv4_3", 512, 8), ("conv4_4", 512, 8)],
    ("pool4", 512, 16),
    *[("conv5_1", 512, 16), ("conv5_2", 512, 16), ("conv5_3", 512, 16), ("conv5_4", 512, 16)],
    ("pool5", 512, 32),
]
RESNET50_LAYERS = [
    ("conv1", 64, 2),
    ("maxpool", 64, 4),
    *[(f"layer1.{i}", 256, 4) for i in range(3)],
    *[(f"layer2.{i}", 512, 8) for i in range(4)],
    *[(f"layer3.{i}", 1024, 16) for i in range(6)],
    *[(f"layer4.{i}", 2048, 32) for i in range(3)],
]
INCEPTION_V3_LAYERS = [
    ("Conv2d_1a_3x3", 32, 2),
    ("Conv2d_2a_3x3", 32, 2),
    ("Conv2d_2b_3x3", 64, 2),
    ("maxpool1", 64, 4),
    ("Conv2d_3b_1x1", 80, 4),
    ("Conv2d_4a_3x3", 192, 4),
    ("maxpool2", 192, 8),
    ("Mixed_5b", 256, 8),
    ("Mixed_5c", 288, 8),
    ("Mixed_5d", 288, 8),
    ("Mixed_6a", 768, 16),
    ("Mixed_6b", 768, 16),
    ("Mixed_6c", 768, 16),
    ("Mixed_6d", 768, 16),
    ("Mixed_6e", 768, 16),
    ("Mixed_7a", 1280, 32),
    ("Mixed_7b", 2048, 32),
    ("Mixed_7c", 2048, 32),
]
GOOGLENET_LAYERS = [
    ("conv1", 64, 2),
    ("maxpool1", 64, 4),
    ("conv2", 64, 4),
    ("conv3", 192, 4),
    ("maxpool2", 192, 8),
    ("inception3a", 256, 8),
    ("inception3b", 480, 8),
    ("maxpool3", 480, 16),
    ("inception4a", 512, 16),
    ("inception4b", 512, 16),
    ("inception4c", 512, 16),
    ("inception4d", 528, 16),
    ("inception4e", 832, 16),
    ("maxpool4", 832, 32),
    ("inception5a", 832, 32),
    ("inception5b", 1024, 32),
]
LAYERS = {
    "vgg16": VGG16_LAYERS,
    "vgg19": VGG19_LAYERS,
    "resnet50": RESNET50_LAYERS,
    "inception-v3": INCEPTION_V3_LAYERS,
    "googlenet": GOOGLENET_LAYERS,
}
ARCHS = list(LAYERS)

# torchvision's file names for the real weights.
WEIGHT_FILES = {
    "vgg16": "vgg16-397923af.pth",
    "vgg19": "vgg19-dcbb9e9d.pth",
    "resnet50": "resnet50-0676ba61.pth",
    "inception-v3": "inception_v3_google-0cc3c7bd.pth",
    "googlenet": "googlenet-1378be20.pth",
}

# A key deep in each network, and a wrong shape for another key: (key, expected, given).
# The wrong shapes are the likely mistakes: a transposed factorised kernel, the 5x5 that
# torchvision's googlenet does not have, swapped channel counts.
MISSING_KEY = {
    "vgg16": "features.28.bias",
    "vgg19": "features.34.weight",
    "resnet50": "layer4.2.bn3.running_var",
    "inception-v3": "Mixed_7c.branch3x3dbl_3b.bn.running_mean",
    "googlenet": "inception5b.branch4.1.conv.weight",
}
MISSHAPED_KEY = {
    "vgg16": ("features.17.weight", (512, 256, 3, 3), (256, 512, 3, 3)),
    "vgg19": ("features.16.weight", (256, 256, 3, 3), (256, 256, 1, 1)),
    "resnet50": ("layer3.0.downsample.0.weight", (1024, 512, 1, 1), (512, 1024, 1, 1)),
    "inception-v3": ("Mixed_6b.branch7x7_2.conv.weight", (128, 128, 1, 7), (128, 128, 7, 1)),
    "googlenet": ("inception3a.branch3.1.conv.weight", (32, 16, 3, 3), (32, 16, 5, 5)),
}

# The layer whose gradient graph is checked against torch, at two sizes (odd and even),
# and the deepest layer at a small size, so every block's weights are exercised. Where a
# ReLU's input lies within float32 rounding of zero the gradient jumps, and float32 and
# float64 legitimately disagree there; the sizes avoid such inputs (googlenet at 56 px has
# one at 4e-7 against a range of 9, which moves its input gradient by 0.5%).
GRADIENT_CASES = [
    ("vgg16", "conv3_2", 33),
    ("vgg16", "conv3_2", 40),
    ("vgg16", "pool5", 32),
    ("vgg19", "conv3_4", 35),
    ("vgg19", "conv3_4", 42),
    ("vgg19", "pool5", 32),
    ("resnet50", "layer2.1", 37),
    ("resnet50", "layer2.1", 48),
    ("resnet50", "layer4.2", 33),
    ("inception-v3", "Mixed_6b", 75),
    ("inception-v3", "Mixed_6b", 90),
    ("inception-v3", "Mixed_7c", 75),
    ("googlenet", "inception4a", 45),
    ("googlenet", "inception4a", 60),
    ("googlenet", "inception5b", 33),
]


def _manifest(model_dir: Path) -> dict:
    return json.loads((model_dir / "manifest.json").read_text())


@dataclass
class FromFile:
    weights: Path
    state: dict[str, np.ndarray]  # the whole state dict (the reference loads it)
    saved: dict[str, np.ndarray]  # what the weights file holds
    model_dir: Path


@pytest.fixture(scope="module")
def from_file(tmp_path_factory):
    """Per arch, once: a random torchvision state dict saved as its file, and its export."""
    exports: dict[str, FromFile] = {}

    def get(arch: str) -> FromFile:
        if arch not in exports:
            tmp = tmp_path_factory.mktemp(arch)
            state = random_state_dict(arch, SEED, aux=True)
            saved = state
            if arch.startswith("vgg"):
                # The classifier is 123M of VGG's 138M parameters and unused: leaving it out
                # keeps the file small. The other files keep their heads (and auxiliary
                # classifiers), so keys the recipe does not read are still exercised.
                saved = {k: v for k, v in state.items() if not k.startswith("classifier.")}
            weights = save_state_dict(saved, tmp / WEIGHT_FILES[arch])
            model_dir = export_model(arch, tmp / "models", weights=weights)
            exports[arch] = FromFile(weights, state, saved, model_dir)
        return exports[arch]

    return get


@pytest.mark.parametrize("arch", ARCHS)
def test_the_export_lists_the_layers_with_channels_and_strides(arch: str, from_file):
    manifest = _manifest(from_file(arch).model_dir)
    listed = [(layer["name"], layer["channels"], layer["stride"]) for layer in manifest["layers"]]
    assert listed == LAYERS[arch]
    assert set(manifest["default_layers"]) <= {name for name, _, _ in listed}
    # Every name is one the torch reference uses too, in the same order.
    names = [name for name, _, _ in listed]
    assert [name for name in layer_names(arch) if name in names] == names


def test_random_weights_export_without_a_weights_file(tmp_path: Path):
    # One architecture is enough: the other recipes read their weights the same way, and
    # each export of a large network costs seconds (VGG's alone is about a minute).
    manifest = _manifest(export_model("googlenet", tmp_path, random_weights=True, seed=SEED))
    assert [(layer["name"], layer["channels"], layer["stride"]) for layer in manifest["layers"]] == LAYERS["googlenet"]
    assert manifest["source"]["weights"].startswith("random")


@pytest.mark.parametrize("arch", ARCHS)
def test_every_graph_passes_the_full_checker_and_runs_on_cuda_kernels(arch: str, from_file):
    assert_graphs_pass_checker_and_cuda_audit(from_file(arch).model_dir)


@pytest.mark.parametrize("arch", ["vgg16", "vgg19", "inception-v3", "googlenet"])
def test_every_layer_has_its_own_cut(arch: str, from_file):
    layers = _manifest(from_file(arch).model_dir)["layers"]
    assert len({layer["graph"] for layer in layers}) == len(layers)


def test_resnet50_blocks_of_a_stage_share_one_cut(from_file):
    layers = _manifest(from_file("resnet50").model_dir)["layers"]
    by_cut: dict[str, list[str]] = {}
    for layer in layers:
        by_cut.setdefault(layer["graph"], []).append(layer["name"])
    assert list(by_cut.values()) == [
        ["conv1"],
        ["maxpool"],
        [f"layer1.{i}" for i in range(3)],
        [f"layer2.{i}" for i in range(4)],
        [f"layer3.{i}" for i in range(6)],
        [f"layer4.{i}" for i in range(3)],
    ]


@pytest.mark.parametrize("arch", ARCHS)
def test_a_torchvision_state_dict_file_loads_through_weights(arch: str, from_file):
    exported = from_file(arch)
    manifest = _manifest(exported.model_dir)
    assert manifest["source"]["weights_file"] == WEIGHT_FILES[arch]
    assert manifest["source"]["weights_file_sha256"] == sha256_of(exported.weights)
    assert [layer["name"] for layer in manifest["layers"]] == [name for name, _, _ in LAYERS[arch]]


@pytest.mark.parametrize("arch", ARCHS)
def test_a_missing_key_is_a_weights_error_naming_it(arch: str, from_file, tmp_path: Path):
    state = dict(from_file(arch).saved)
    key = MISSING_KEY[arch]
    del state[key]
    path = save_state_dict(state, tmp_path / WEIGHT_FILES[arch])
    expected_shape = re.escape(str(tuple(from_file(arch).saved[key].shape)))
    with pytest.raises(WeightsError, match=f"missing weight '{re.escape(key)}', expected shape {expected_shape}"):
        export_model(arch, tmp_path / "models", weights=path)


@pytest.mark.parametrize("arch", ARCHS)
def test_a_misshaped_key_is_a_weights_error_naming_it_and_the_expected_shape(arch: str, from_file, tmp_path: Path):
    state = dict(from_file(arch).saved)
    key, expected, given = MISSHAPED_KEY[arch]
    assert state[key].shape == expected
    state[key] = np.zeros(given, np.float32)
    path = save_state_dict(state, tmp_path / WEIGHT_FILES[arch])
    with pytest.raises(WeightsError) as error:
        export_model(arch, tmp_path / "models", weights=path)
    assert key in str(error.value)
    assert f"expected shape {expected}" in str(error.value)


def _run_graph(model_dir: Path, graph: str, image: np.ndarray, lw: np.ndarray, cw: np.ndarray):
    session = ort.InferenceSession(str(model_dir / graph), providers=["CPUExecutionProvider"])
    feeds = {"image": image, "layer_weights": lw, "channel_weights": cw}
    return session.run(["loss", "grad", "channel_means"], feeds)


def _torch_dream(arch: str, state: dict, layers: list[dict], image: np.ndarray, lw, cw):
    """loss [N], d loss / d image and the channel means of `layers`, by torch in float64."""
    reference = build_reference(arch, state).double()
    x = torch.tensor(image, dtype=torch.float64, requires_grad=True)
    activations = reference(x, [layer["name"] for layer in layers])
    loss = torch.zeros(image.shape[0], dtype=torch.float64)
    means = []
    for index, layer in enumerate(layers):
        a = activations[layer["name"]]
        offset, channels = layer["channel_offset"], layer["channels"]
        weights = torch.tensor(cw[offset : offset + channels], dtype=torch.float64).view(1, -1, 1, 1)
        size = channels * a.shape[2] * a.shape[3]
        loss = loss + float(lw[index]) / size * (weights * a * a).sum((1, 2, 3))
        means.append(a.mean((2, 3)))
    loss.sum().backward()
    return loss.detach().numpy(), x.grad.numpy(), torch.cat(means, 1).detach().numpy()


def _relative(ours: np.ndarray, theirs: np.ndarray) -> float:
    return float(np.abs(ours - theirs).max() / np.abs(theirs).max())


@pytest.mark.parametrize(("arch", "layer", "size"), GRADIENT_CASES)
def test_gradient_graph_agrees_with_torch_autograd(arch: str, layer: str, size: int, from_file):
    exported = from_file(arch)
    manifest = _manifest(exported.model_dir)
    layers = manifest["layers"]
    graph = next(entry["graph"] for entry in layers if entry["name"] == layer)
    # The graph computes every layer up to the last one of its cut; deeper ones are zero.
    last = max(i for i, entry in enumerate(layers) if entry["graph"] == graph)
    computed = layers[: last + 1]
    channels = sum(entry["channels"] for entry in computed)

    rng = np.random.default_rng(size)
    image = rng.uniform(0.0, 1.0, (2, 3, size, size)).astype(np.float32)
    lw = rng.uniform(0.5, 1.5, len(layers)).astype(np.float32)
    cw = rng.uniform(0.0, 1.0, sum(entry["channels"] for entry in layers)).astype(np.float32)

    loss, grad, means = _run_graph(exported.model_dir, graph, image, lw, cw)
    torch_loss, torch_grad, torch_means = _torch_dream(arch, exported.state, computed, image, lw, cw)

    assert loss.shape == (2,) and grad.shape == image.shape
    assert _relative(loss, torch_loss) <= TOLERANCE
    assert _relative(grad, torch_grad) <= TOLERANCE
    assert _relative(means[:, :channels], torch_means) <= TOLERANCE
    assert not means[:, channels:].any()
