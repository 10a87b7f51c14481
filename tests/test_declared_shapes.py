"""The shapes the export declares for gradients (export.autodiff.declare_gradient_shapes), held
to what ONNX Runtime really computes, and what they buy: the masks' products stay in its
blocked NCHWc layout."""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import helper

from dreamstream.modeldir import CHANNEL_WEIGHTS, GUIDE, IMAGE, LAYER_WEIGHTS, SHIFT, STEP_SIZE, read_manifest


def declared(model: onnx.ModelProto) -> dict[str, list[int | str]]:
    return {
        value.name: [dim.dim_param or dim.dim_value for dim in value.type.tensor_type.shape.dim]
        for value in model.graph.value_info
    }


def step_graph(lite0_dir: Path) -> Path:
    manifest = read_manifest(lite0_dir)
    return lite0_dir / manifest.layer(list(manifest.default_layers)[-1]).step_graph


def feeds_for(session: ort.InferenceSession, model_dir: Path, height: int, width: int) -> dict[str, np.ndarray]:
    """Real-looking inputs for any of a model's graphs (step, gradient, guide) at height x width."""
    manifest = read_manifest(model_dir)
    rng = np.random.default_rng(5)
    known = {
        IMAGE: rng.random((1, 3, height, width), np.float32),
        GUIDE: rng.random((1, 3, width, height), np.float32),  # the guide may have another size
        LAYER_WEIGHTS: np.ones(len(manifest.layers), np.float32),
        CHANNEL_WEIGHTS: np.ones(manifest.channel_total, np.float32),
        SHIFT: np.array([7, 3], np.int64),
        STEP_SIZE: np.array([0.01], np.float32),
    }
    return {value.name: known[value.name] for value in session.get_inputs()}


# (model fixture, the graphs of its default layers' last layer to check)
GRAPHS = {
    "lite0-step": ("lite0_dir", "step_graph"),
    "lite0-guide": ("lite0_dir", "guide_graph"),
    "googlenet-focus-step": ("googlenet_bvlc_dir", "focus_step_graph"),
    "googlenet-gradient": ("googlenet_bvlc_dir", "graph"),
}


@pytest.mark.parametrize("name", list(GRAPHS))
def test_every_declared_dim_is_the_size_ort_computes_at_any_picture_size(
    name: str, request: pytest.FixtureRequest
) -> None:
    fixture, kind = GRAPHS[name]
    model_dir: Path = request.getfixturevalue(fixture)
    manifest = read_manifest(model_dir)
    layer = manifest.layer(list(manifest.default_layers)[-1])
    model = onnx.load(model_dir / getattr(layer, kind))  # its weights read in
    shapes = declared(model)
    assert len(shapes) > 50  # every differentiated activation and its gradient
    # Every declared tensor an output of the graph, to see the sizes ONNX Runtime gives it.
    model.graph.output.extend(helper.make_tensor_value_info(name, onnx.TensorProto.FLOAT, None) for name in shapes)
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    names = [output.name for output in session.get_outputs()]
    for height, width in ((224, 160), (131, 197)):
        outputs = dict(zip(names, session.run(None, feeds_for(session, model_dir, height, width)), strict=True))
        sizes: dict[str, set[int]] = defaultdict(set)
        for name, dims in shapes.items():
            actual = outputs[name].shape
            assert len(actual) == len(dims), name
            for dim, size in zip(dims, actual, strict=True):
                if isinstance(dim, str):
                    sizes[dim].add(size)
                else:
                    assert dim == size, f"{name}: declared {dims}, computed {actual}"
        unequal = {dim: found for dim, found in sizes.items() if len(found) > 1}
        assert not unequal, f"dims declared equal that differ at {height}x{width}: {unequal}"


def test_a_gradient_times_its_mask_stays_in_the_blocked_layout(lite0_dir: Path, tmp_path: Path) -> None:
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.optimized_model_filepath = str(tmp_path / "optimized.onnx")
    ort.InferenceSession(str(step_graph(lite0_dir)), options, providers=["CPUExecutionProvider"])
    optimized = onnx.load(tmp_path / "optimized.onnx", load_external_data=False)
    if not any(node.domain == "com.microsoft.nchwc" for node in optimized.graph.node):
        pytest.skip("ONNX Runtime keeps no blocked (NCHWc) layout on this CPU")
    producer = {out: node for node in optimized.graph.node for out in node.output}
    masked = [node for node in optimized.graph.node if node.op_type == "Mul" and "clip_grad" in node.name]
    assert masked, "no ReLU6 gradient found in the step graph"
    reordered = [node.name for node in masked if any(_reordered(producer.get(i)) for i in node.input)]
    # A few are fed by a gradient that is not blocked itself (a strided convolution's
    # transposed backward); without the declared shapes 21 of the 26 were reordered.
    assert len(reordered) <= len(masked) // 4, reordered


def _reordered(node: onnx.NodeProto | None) -> bool:
    """Whether `node` changes a tensor from the blocked layout back to NCHW."""
    return node is not None and node.op_type == "ReorderOutput"
