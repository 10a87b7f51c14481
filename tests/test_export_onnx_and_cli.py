"""`dreamstream export onnx` (a user's own classifier) and the export tool's command line."""

from __future__ import annotations

import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from conftest import assert_graphs_pass_checker_and_cuda_audit
from torch import nn

from dreamstream.export.api import OnnxOptions, export_model
from dreamstream.export.backbones.onnx_file import OnnxBackboneError, candidate_layers
from dreamstream.modeldir import read_manifest

MEAN = (0.485, 0.456, 0.406)
STD = (0.229, 0.224, 0.225)


class TinyClassifier(nn.Module):
    """Ops a user's network typically has: conv+BN, ReLU, max pool, residual add, squeeze-excite, HardSwish."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.stem = nn.Sequential(nn.Conv2d(3, 8, 3, 2, 1), nn.BatchNorm2d(8), nn.ReLU())
        self.pool = nn.MaxPool2d(3, 2, 1)
        self.body = nn.Conv2d(8, 8, 3, 1, 1)
        self.excite = nn.Conv2d(8, 8, 1)
        self.head = nn.Sequential(nn.Conv2d(8, 16, 3, 2, 1), nn.Hardswish())
        self.fc = nn.Linear(16, 10)
        for module in self.modules():
            if isinstance(module, nn.BatchNorm2d):
                module.running_mean.uniform_(-0.5, 0.5)
                module.running_var.uniform_(0.5, 1.5)

    def features(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        s = self.pool(self.stem(x))
        b = torch.relu(self.body(s)) + s
        b = b * torch.sigmoid(self.excite(b.mean((2, 3), keepdim=True)))
        return b, self.head(b)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.features(x)[1].mean((2, 3)))


@pytest.fixture(scope="module")
def tiny_onnx(tmp_path_factory) -> tuple[Path, list[str]]:
    """The classifier exported by torch at a fixed 224x224, and the names of its two feature tensors."""
    path = tmp_path_factory.mktemp("user") / "tiny.onnx"
    model = TinyClassifier().eval()
    with warnings.catch_warnings():
        # The TorchScript exporter is deprecated but needs no onnxscript; what it writes is what
        # many users' files look like.
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.onnx.export(model, torch.zeros(1, 3, 224, 224), str(path), opset_version=13, dynamo=False)
    graph = onnx.load(str(path)).graph
    # torch writes the squeeze-excite product, then HardSwish as HardSigmoid times its input.
    muls = [node.output[0] for node in graph.node if node.op_type == "Mul"]
    return path, [muls[0], muls[-1]]


def test_user_onnx_gradient_matches_torch(tiny_onnx, tmp_path):
    path, layers = tiny_onnx
    model_dir = export_model(
        "onnx", tmp_path, name="tiny", onnx_options=OnnxOptions(path=path, layers=layers, mean=MEAN, std=STD)
    )
    manifest = read_manifest(model_dir)
    assert_graphs_pass_checker_and_cuda_audit(model_dir)
    assert [layer.channels for layer in manifest.layers] == [8, 16]
    assert [layer.stride for layer in manifest.layers] == [4, 8]

    rng = np.random.default_rng(0)
    image = rng.uniform(0, 1, (2, 3, 45, 38)).astype(np.float32)  # not the 224 it was exported at
    session = ort.InferenceSession(str(model_dir / manifest.layers[-1].graph), providers=["CPUExecutionProvider"])
    layer_weights = np.array([0.5, 1.0], np.float32)
    loss, grad, _ = session.run(
        None, {"image": image, "layer_weights": layer_weights, "channel_weights": np.ones(24, np.float32)}
    )

    reference = TinyClassifier().eval().double()
    x = torch.from_numpy(image).double().requires_grad_(True)
    normalised = (x - torch.tensor(MEAN).double().view(1, 3, 1, 1)) / torch.tensor(STD).double().view(1, 3, 1, 1)
    body, head = reference.features(normalised)
    expected = 0.5 * (body**2).mean((1, 2, 3)) + 1.0 * (head**2).mean((1, 2, 3))
    expected.sum().backward()
    np.testing.assert_allclose(loss, expected.detach().numpy(), rtol=1e-4)
    assert np.abs(grad - x.grad.numpy()).max() / np.abs(x.grad.numpy()).max() <= 1e-4


def test_user_onnx_unknown_tensor_names_the_closest(tiny_onnx, tmp_path):
    path, layers = tiny_onnx
    with pytest.raises(OnnxBackboneError, match="has no tensor 'not_a_tensor'"):
        export_model("onnx", tmp_path, onnx_options=OnnxOptions(path=path, layers=["not_a_tensor"]))


def _cli(*args: str) -> subprocess.CompletedProcess:
    code = "import sys; from dreamstream.cli import main; sys.exit(main(sys.argv[1:]))"
    return subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, timeout=300)


def test_cli_unknown_backbone_lists_the_known_ones(tmp_path):
    result = _cli("export", "alexnet", "--out", str(tmp_path))
    assert result.returncode == 2
    assert "unknown backbone 'alexnet'" in result.stderr
    for known in ("efficientnet-lite0", "googlenet-bvlc", "onnx"):
        assert known in result.stderr
    assert "Traceback" not in result.stderr


def test_cli_backbone_without_packaged_weights_asks_for_them(tmp_path):
    result = _cli("export", "googlenet-bvlc", "--out", str(tmp_path))
    assert result.returncode == 2
    assert "--weights" in result.stderr and "Traceback" not in result.stderr


def test_cli_misshaped_weight_names_the_layer_and_expected_shape(tmp_path):
    weights = {"conv1/7x7_s2/weight": np.zeros((64, 3, 5, 5), np.float32)}
    path = tmp_path / "broken.npz"
    np.savez(path, **weights)
    result = _cli("export", "googlenet-bvlc", "--out", str(tmp_path / "models"), "--weights", str(path))
    assert result.returncode == 2
    assert "conv1/7x7_s2/weight" in result.stderr and "(64, 3, 7, 7)" in result.stderr
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "models" / "googlenet-bvlc").exists()


def test_cli_exports_and_lists_layers_deepest_last(tmp_path):
    result = _cli("export", "efficientnet-lite0", "--out", str(tmp_path), "--name", "lite")
    assert result.returncode == 0, result.stderr
    listing = _cli("layers", str(tmp_path / "lite"))
    assert listing.returncode == 0, listing.stderr
    rows = [line.split() for line in listing.stdout.strip().splitlines()[1:]]
    assert rows[0][:3] == ["stem", "32", "2"]
    assert rows[-1][:3] == ["head", "1280", "32"]
    assert any(len(row) == 4 for row in rows)  # the default layers carry their weight
    assert listing.stdout.splitlines()[0].split() == ["layer", "channels", "stride", "default", "weight"]


def test_cli_layers_of_a_directory_that_is_no_model(tmp_path):
    result = _cli("layers", str(tmp_path))
    assert result.returncode == 2
    assert "manifest.json" in result.stderr and "Traceback" not in result.stderr


def test_cli_refuses_an_op_without_a_rule_naming_it_and_what_to_do(tmp_path):
    odd = onnx.helper.make_node("LpNormalization", ["c1"], ["n1"], name="odd_norm", axis=1)
    path = _conv_relu_conv(tmp_path / "odd.onnx", odd, [onnx.helper.make_opsetid("", 17)])
    result = _cli("export", "onnx", "--onnx", str(path), "--layers", "c2", "--out", str(tmp_path / "models"))
    assert result.returncode == 2
    assert "'odd_norm'" in result.stderr and "LpNormalization" in result.stderr
    assert "dreamstream layers --onnx" in result.stderr
    assert "Traceback" not in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


class FixedShapeNet(nn.Module):
    """A channel shuffle whose reshape a static export freezes at the traced size."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.conv = nn.Conv2d(3, 4, 3, 2, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = torch.relu(self.conv(x))
        n, c, h, w = y.shape
        return y.reshape(n, 2, c // 2, h, w).transpose(1, 2).reshape(n, c, h, w)


def test_cli_export_of_a_fixed_size_network_says_so_and_records_it(tmp_path):
    path = tmp_path / "fixed.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.onnx.export(
            FixedShapeNet().eval(), torch.zeros(1, 3, 48, 48), str(path), opset_version=17, dynamo=False,
            input_names=["input"], output_names=["shuffled"],
        )  # fmt: skip
    result = _cli("export", "onnx", "--onnx", str(path), "--layers", "shuffled", "--out", str(tmp_path / "models"))
    assert result.returncode == 0, result.stderr
    assert "runs only on 48x48 pictures" in result.stdout and "fixed_size=48" in result.stdout
    manifest = read_manifest(tmp_path / "models" / "onnx")
    assert (manifest.fixed_size, manifest.min_size) == (48, 48)


def test_cli_lists_the_candidate_layers_of_an_onnx_file_deepest_last(tiny_onnx):
    path, (body, head) = tiny_onnx
    result = _cli("layers", "--onnx", str(path))
    assert result.returncode == 0, result.stderr
    lines = result.stdout.strip().splitlines()
    assert lines[0].split() == ["tensor", "op", "channels", "stride"]
    rows = {row[0]: row[1:] for row in (line.split() for line in lines[1:-1])}
    assert rows[body] == ["Mul", "8", "4"]  # the squeeze-excite product
    assert lines[-2].split() == [head, "Mul", "16", "8"]  # HardSwish, written as x * HardSigmoid(x)
    assert lines[-1].startswith("--layers auto picks: ") and lines[-1].endswith(head)


def test_cli_exports_an_onnx_file_with_automatic_layers(tiny_onnx, tmp_path):
    path, (_, head) = tiny_onnx
    result = _cli("export", "onnx", "--onnx", str(path), "--layers", "auto", "--out", str(tmp_path))
    assert result.returncode == 0, result.stderr
    manifest = read_manifest(tmp_path / "onnx")
    assert manifest.layers[-1].name == head
    assert set(manifest.default_layers) <= {layer.name for layer in manifest.layers}


def test_cli_layers_needs_a_model_or_an_onnx_file():
    result = _cli("layers")
    assert result.returncode == 2 and "--onnx FILE" in result.stderr and "Traceback" not in result.stderr


class ChannelsLast(nn.Module):
    """The tiny classifier behind an NHWC input, as TensorFlow's converters write networks."""

    def __init__(self, features: str = "nchw") -> None:
        super().__init__()
        self.net = TinyClassifier()
        self.features = features

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        body, head = self.net.features(x.permute(0, 3, 1, 2))
        if self.features == "nhwc":  # as tf2onnx ends a Keras model's outputs: a Transpose to NHWC
            return body.permute(0, 2, 3, 1), head.permute(0, 2, 3, 1)
        if self.features == "nhwc_then_relu":  # computed on in NHWC, as tf2onnx leaves some networks
            return torch.relu(body.permute(0, 2, 3, 1)), torch.relu(head.permute(0, 2, 3, 1))
        return body, head


@pytest.mark.parametrize("features", ["nchw", "nhwc", "nhwc_then_relu"])
def test_user_onnx_with_an_nhwc_input_exports_with_the_gradient_of_torch(tmp_path, features):
    """Named feature maps in either layout are dreamed on as NCHW maps (channels and stride right)."""
    path = tmp_path / "nhwc.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.onnx.export(
            ChannelsLast(features).eval(), torch.zeros(1, 64, 64, 3), str(path), opset_version=13, dynamo=False,
            input_names=["input"], output_names=["body", "head"], dynamic_axes={"input": {0: "N", 1: "H", 2: "W"}},
        )  # fmt: skip
    model_dir = export_model(
        "onnx", tmp_path, name="nhwc", onnx_options=OnnxOptions(path=path, layers=["body", "head"])
    )
    manifest = read_manifest(model_dir)
    assert [(layer.channels, layer.stride) for layer in manifest.layers] == [(8, 4), (16, 8)]
    image = np.random.default_rng(1).uniform(0, 1, (1, 3, 40, 52)).astype(np.float32)
    session = ort.InferenceSession(str(model_dir / manifest.layers[-1].graph), providers=["CPUExecutionProvider"])
    feeds = {"image": image, "layer_weights": np.ones(2, np.float32), "channel_weights": np.ones(24, np.float32)}
    _, grad, _ = session.run(None, feeds)

    x = torch.from_numpy(image).double().requires_grad_(True)
    body, head = ChannelsLast(features).eval().double()(x.permute(0, 2, 3, 1))
    ((body**2).mean((1, 2, 3)) + (head**2).mean((1, 2, 3))).sum().backward()
    assert np.abs(grad - x.grad.numpy()).max() / np.abs(x.grad.numpy()).max() <= 1e-4
    if features == "nhwc_then_relu":  # `dreamstream layers` lists the NHWC maps too, measured as NCHW
        candidates = {candidate.name: candidate for candidate in candidate_layers(path)}
        assert (candidates["head"].channels, candidates["head"].stride) == (16, 8)


def _conv_relu_conv(path: Path, middle: onnx.NodeProto, imports: list[onnx.OperatorSetIdProto]) -> Path:
    """A two-convolution network with `middle` (from c1 to n1) between them, saved with `imports`."""
    rng = np.random.default_rng(0)
    weights = [
        onnx.numpy_helper.from_array(rng.normal(0, 0.3, (4, 3, 3, 3)).astype(np.float32), "w1"),
        onnx.numpy_helper.from_array(rng.normal(0, 0.3, (4, 4, 3, 3)).astype(np.float32), "w2"),
    ]
    nodes = [
        onnx.helper.make_node("Conv", ["data", "w1"], ["c1"], name="conv1", kernel_shape=[3, 3]),
        middle,
        onnx.helper.make_node("Conv", ["n1", "w2"], ["c2"], name="conv2", kernel_shape=[3, 3]),
    ]
    graph = onnx.helper.make_graph(
        nodes,
        "net",
        [onnx.helper.make_tensor_value_info("data", onnx.TensorProto.FLOAT, [1, 3, 32, 32])],
        [onnx.helper.make_tensor_value_info("c2", onnx.TensorProto.FLOAT, None)],
        weights,
    )
    onnx.save(onnx.helper.make_model(graph, opset_imports=imports), str(path))
    return path


def test_a_declared_but_unused_op_domain_is_no_obstacle(tmp_path):
    """tf2onnx imports ai.onnx.ml in every model it writes, used or not."""
    relu = onnx.helper.make_node("Relu", ["c1"], ["n1"], name="relu")
    imports = [onnx.helper.make_opsetid("", 15), onnx.helper.make_opsetid("ai.onnx.ml", 2)]
    path = _conv_relu_conv(tmp_path / "ml.onnx", relu, imports)
    model_dir = export_model("onnx", tmp_path / "models", onnx_options=OnnxOptions(path=path, layers=["c2"]))
    assert read_manifest(model_dir).layers[-1].channels == 4


def test_cli_refuses_a_node_of_another_op_domain_naming_it(tmp_path):
    gelu = onnx.helper.make_node("FastGelu", ["c1"], ["n1"], name="contrib_gelu", domain="com.microsoft")
    imports = [onnx.helper.make_opsetid("", 17), onnx.helper.make_opsetid("com.microsoft", 1)]
    path = _conv_relu_conv(tmp_path / "contrib.onnx", gelu, imports)
    result = _cli("export", "onnx", "--onnx", str(path), "--layers", "c2", "--out", str(tmp_path / "models"))
    assert result.returncode == 2
    assert "'contrib_gelu'" in result.stderr and "FastGelu" in result.stderr and "com.microsoft" in result.stderr
    assert "Traceback" not in result.stderr and len(result.stderr.strip().splitlines()) == 1


def test_cli_refuses_an_op_its_converter_left_unconverted_naming_it(tmp_path):
    """tf2onnx leaves a Keras layer it cannot convert as a TensorFlow op (ConvNeXt's depthwise
    convolution as StatefulPartitionedCall): no ONNX op, named as such, not a converter's assertion."""
    left = onnx.helper.make_node("StatefulPartitionedCall", ["c1"], ["n1"], name="block_0/depthwise_conv")
    path = _conv_relu_conv(tmp_path / "left.onnx", left, [onnx.helper.make_opsetid("", 15)])
    result = _cli("export", "onnx", "--onnx", str(path), "--layers", "c2", "--out", str(tmp_path / "models"))
    assert result.returncode == 2
    assert "'block_0/depthwise_conv'" in result.stderr and "StatefulPartitionedCall" in result.stderr
    assert "no ONNX op" in result.stderr and "Traceback" not in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
