"""Tests of the CUDA execution provider support table and graph audit."""

from __future__ import annotations

from collections.abc import Sequence

import cuda_support
import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

FLOAT = TensorProto.FLOAT


def _model(
    nodes: list[onnx.NodeProto],
    inputs: list[onnx.ValueInfoProto],
    outputs: list[onnx.ValueInfoProto],
    initializers: Sequence[onnx.TensorProto] = (),
    opset: int = 17,
) -> onnx.ModelProto:
    graph = helper.make_graph(nodes, "g", inputs, outputs, list(initializers))
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    onnx.checker.check_model(model)
    return model


def _weight(name: str, shape: tuple[int, ...]) -> onnx.TensorProto:
    return numpy_helper.from_array(np.zeros(shape, np.float32), name)


def test_cnn_graph_passes() -> None:
    x = helper.make_tensor_value_info("x", FLOAT, [1, 3, 8, 8])
    y = helper.make_tensor_value_info("y", FLOAT, [1, 8, 4, 4])
    nodes = [
        helper.make_node("Conv", ["x", "w"], ["c"], name="conv", pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c"], ["r"], name="relu"),
        helper.make_node("MaxPool", ["r"], ["p"], name="pool", kernel_shape=[2, 2], strides=[2, 2]),
        helper.make_node("Concat", ["p", "p"], ["y"], name="cat", axis=1),
    ]
    model = _model(nodes, [x], [y], [_weight("w", (4, 3, 3, 3))])
    assert cuda_support.cuda_unsupported(model) == []


def test_max_pool_indices_output_runs_on_cuda() -> None:
    x = helper.make_tensor_value_info("x", FLOAT, [1, 2, 4, 4])
    y = helper.make_tensor_value_info("y", FLOAT, [1, 2, 2, 2])
    i = helper.make_tensor_value_info("i", TensorProto.INT64, [1, 2, 2, 2])
    node = helper.make_node("MaxPool", ["x"], ["y", "i"], name="pool", kernel_shape=[2, 2], strides=[2, 2])
    assert cuda_support.cuda_unsupported(_model([node], [x], [y, i])) == []


def test_op_without_cuda_kernel_is_flagged() -> None:
    x = helper.make_tensor_value_info("x", FLOAT, [1, 1, 2, 2])
    i = helper.make_tensor_value_info("i", TensorProto.INT64, [1, 1, 2, 2])
    y = helper.make_tensor_value_info("y", FLOAT, ["n", "c", "h", "w"])
    m = helper.make_tensor_value_info("m", FLOAT, [1, 1, 2, 2])
    nodes = [
        helper.make_node("MaxUnpool", ["x", "i"], ["u"], name="unpool", kernel_shape=[2, 2], strides=[2, 2]),
        helper.make_node("Mean", ["x", "x"], ["m"], name="mean"),
        helper.make_node("Identity", ["u"], ["y"], name="id"),
    ]
    problems = cuda_support.cuda_unsupported(_model(nodes, [x, i], [y, m]))
    assert problems == [
        "node 'unpool' (MaxUnpool): no CUDA kernel for opset 17",
        "node 'mean' (Mean): no CUDA kernel for opset 17",
    ]


def test_other_domains_are_flagged() -> None:
    x = helper.make_tensor_value_info("x", FLOAT, [4])
    y = helper.make_tensor_value_info("y", FLOAT, [4])
    node = helper.make_node("FastGelu", ["x"], ["y"], name="gelu", domain="com.microsoft")
    graph = helper.make_graph([node], "g", [x], [y])
    model = helper.make_model(
        graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("com.microsoft", 1)]
    )
    assert cuda_support.cuda_unsupported(model) == [
        "node 'gelu' (FastGelu): domain 'com.microsoft' is outside the ai.onnx table"
    ]


def _conv_transpose(**attributes: object) -> onnx.ModelProto:
    x = helper.make_tensor_value_info("x", FLOAT, [1, 2, 4, 4])
    y = helper.make_tensor_value_info("y", FLOAT, ["n", "c", "h", "w"])
    node = helper.make_node("ConvTranspose", ["x", "w"], ["y"], name="up", strides=[2, 2], **attributes)
    return _model([node], [x], [y], [_weight("w", (2, 2, 3, 3))])


def test_conv_transpose_asymmetric_pads_are_flagged() -> None:
    problems = cuda_support.cuda_unsupported(_conv_transpose(pads=[0, 0, 1, 1]))
    assert problems == ["node 'up' (ConvTranspose): asymmetric pads [0, 0, 1, 1] fall back to CPU"]
    assert cuda_support.cuda_unsupported(_conv_transpose(pads=[1, 1, 1, 1])) == []
    same = cuda_support.cuda_unsupported(_conv_transpose(auto_pad="SAME_UPPER"))
    assert same == ["node 'up' (ConvTranspose): auto_pad=SAME_UPPER falls back to CPU (its pads may be asymmetric)"]


def test_scatter_elements_add_needs_ort_1_18() -> None:
    data = helper.make_tensor_value_info("data", FLOAT, [2, 4])
    idx = helper.make_tensor_value_info("idx", TensorProto.INT64, [2, 4])
    upd = helper.make_tensor_value_info("upd", FLOAT, [2, 4])
    out = helper.make_tensor_value_info("out", FLOAT, [2, 4])
    node = helper.make_node("ScatterElements", ["data", "idx", "upd"], ["out"], name="scatter", axis=1, reduction="add")
    model = _model([node], [data, idx, upd], [out])
    assert cuda_support.cuda_unsupported(model) == []
    assert cuda_support.cuda_unsupported(model, ort_version=(1, 18)) == []
    assert cuda_support.cuda_unsupported(model, ort_version=(1, 17)) == [
        "node 'scatter' (ScatterElements): reduction='add' is ignored by CUDA before onnxruntime-gpu 1.18"
    ]


def test_average_pool_ceil_mode_needs_ort_1_29() -> None:
    x = helper.make_tensor_value_info("x", FLOAT, [1, 1, 5, 5])
    y = helper.make_tensor_value_info("y", FLOAT, ["n", "c", "h", "w"])
    node = helper.make_node("AveragePool", ["x"], ["y"], name="avg", kernel_shape=[2, 2], strides=[2, 2], ceil_mode=1)
    model = _model([node], [x], [y])
    assert cuda_support.cuda_unsupported(model, ort_version=(1, 29)) == []
    assert cuda_support.cuda_unsupported(model, ort_version=(1, 28)) == [
        "node 'avg' (AveragePool): wrong results on CUDA before onnxruntime-gpu 1.29 (ceil_mode=1)"
    ]


def test_float16_nodes_use_the_float16_table() -> None:
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT16, [4])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT16, [4])
    node = helper.make_node("Clip", ["x"], ["y"], name="clip")
    model = _model([node], [x], [y], opset=11)
    assert cuda_support.cuda_unsupported(model) == ["node 'clip' (Clip): no CUDA float16 kernel for opset 11"]
    assert cuda_support.cuda_unsupported(_model([node], [x], [y], opset=12)) == []


@pytest.mark.parametrize(
    ("version", "expected"),
    [(6, False), (7, True), (8, True), (9, True), (10, False), (17, False)],
)
def test_range_lookup_edges(version: int, expected: bool) -> None:
    # Upsample: [7, 8] and 9 on CUDA, nothing before 7 or from 10 (where it was deprecated).
    assert cuda_support.has_cuda_kernel("Upsample", version) is expected


def test_open_ended_and_float16_ranges() -> None:
    assert not cuda_support.has_cuda_kernel("GreaterOrEqual", 11)
    assert cuda_support.has_cuda_kernel("GreaterOrEqual", 12)
    assert cuda_support.has_cuda_kernel("GreaterOrEqual", 15)
    assert cuda_support.has_cuda_kernel("GreaterOrEqual", 16)
    assert cuda_support.has_cuda_kernel("GreaterOrEqual", 99)
    assert cuda_support.has_cuda_kernel("Clip", 11)
    assert not cuda_support.has_cuda_kernel("Clip", 11, float16=True)
    assert cuda_support.has_cuda_kernel("Range", 17)
    assert not cuda_support.has_cuda_kernel("Range", 17, float16=True)
    assert not cuda_support.has_cuda_kernel("MaxUnpool", 17)


def test_tables_are_well_formed() -> None:
    for table in (cuda_support.CUDA_FLOAT_KERNELS, cuda_support.CUDA_FLOAT16_KERNELS):
        for op, ranges in table.items():
            assert ranges, op
            ends = [until for _, until in ranges]
            assert ends.count(None) <= 1, op
            for since, until in ranges:
                assert until is None or since <= until, op
