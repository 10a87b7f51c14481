"""Which ONNX ops ONNX Runtime's CUDA execution provider runs, and an audit of a graph.

Production runs our graphs on ORT's CUDA EP, but no machine of ours has a GPU, so
this module records what the CUDA EP implements and checks a graph against it. It is
a test helper: the tests audit every graph the export writes with it.

Where the table comes from
    `CUDA_FLOAT_KERNELS` is transcribed from the section "Operators implemented by
    CUDAExecutionProvider" (ai.onnx domain) of `docs/OperatorKernels.md` in the
    microsoft/onnxruntime repository, at commit
    001d12d2623fd411ce0f83d05abb5e82304a3389. That file is generated from the kernel
    registry by `tools/python/gen_opkernel_doc.py`. The commit is a main-branch snapshot
    whose CPU section already registers opset-25 kernels (Cast 25+), so it belongs to
    the ORT 1.24-or-later development line; the exact release could not be pinned.
    The attribute rules come from the CUDA EP sources and were checked against the
    strings in `libonnxruntime_providers_cuda.so` of onnxruntime-gpu wheels from PyPI:
    1.17.1 and 1.18.0 (ScatterElements reduction), 1.28.0 to 1.31.1 (AveragePool
    kernel) and 1.31.1 (ConvTranspose fallback, LRN).

How to refresh it
    Open the CUDA section of a newer `docs/OperatorKernels.md` and, for every op
    listed here, copy each row whose type column includes `tensor(float)` (for the
    bool-only And, Or, Xor and Not, and for Equal, copy every row): `13+` becomes
    `(13, None)`, `[6, 12]` becomes `(6, 12)` and a bare `12` becomes `(12, 12)`.
    Update `_FLOAT16_EXCEPTIONS` with the rows that lack `tensor(float16)`, then the
    commit above. The generator reads
    `onnxruntime.capi.onnxruntime_pybind11_state.get_all_opkernel_def()`; on a machine
    with onnxruntime-gpu and its CUDA libraries its rows whose `provider` is
    "CUDAExecutionProvider" should give the same data (not tried here: no GPU).

What the audit cannot see
    A kernel existing does not promise the node lands on the GPU: ORT also places small
    shape-computation subgraphs on the CPU on purpose (`GetCpuPreferredNodes`), and
    some kernels reject inputs at run time (Resize 'linear' takes 2-D to 5-D inputs and
    'cubic' 2-D or 4-D ones, 4-D and 5-D only with unit batch and channel scales; LRN
    takes only 4-D or 5-D inputs).
    Mean, MaxUnpool, LpPool and GlobalLpPool have no CUDA kernel. Constant nodes need
    none: ORT turns them into initializers when it loads the graph.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import onnx
from onnx import TensorProto, defs, helper, shape_inference

OpsetRange = tuple[int, int | None]  # [since, until] inclusive; None is "and later"
OrtVersion = tuple[int, int]  # (major, minor) of onnxruntime-gpu

OPERATOR_KERNELS_COMMIT = "001d12d2623fd411ce0f83d05abb5e82304a3389"
# The newest onnxruntime-gpu whose CUDA provider library the rules were checked against.
NEWEST_CHECKED_ORT: OrtVersion = (1, 31)

# op type -> opset ranges of the CUDA kernels that accept tensor(float). For ops whose
# inputs are never float (And, Or, Xor, Not: bool only) and for Equal (whose [7, 10]
# kernel takes bool, int32 and int64 only), every range with a kernel is listed.
CUDA_FLOAT_KERNELS: dict[str, tuple[OpsetRange, ...]] = {
    "Abs": ((6, 12), (13, None)),
    "Add": ((7, 12), (13, 13), (14, None)),
    "And": ((7, None),),
    "ArgMax": ((1, 11), (12, 12), (13, None)),
    "ArgMin": ((1, 11), (12, 12), (13, None)),
    "AveragePool": ((7, 9), (10, 10), (11, 18), (19, 21), (22, None)),
    "BatchNormalization": ((7, 8), (9, 13), (14, 14), (15, None)),
    "Cast": ((6, 8), (9, 12), (13, 18), (19, 20), (21, 22), (23, None)),
    "Ceil": ((6, 12), (13, None)),
    "Clip": ((6, 10), (11, 11), (12, 12), (13, None)),
    "Compress": ((9, 10), (11, None)),
    "Concat": ((4, 10), (11, 12), (13, None)),
    "ConstantOfShape": ((9, None),),
    "Conv": ((1, 10), (11, 21), (22, None)),
    "ConvTranspose": ((1, 10), (11, None)),
    "Cos": ((7, None),),
    "CumSum": ((11, 13), (14, None)),
    "DepthToSpace": ((1, 10), (11, 12), (13, None)),
    "Div": ((7, 12), (13, 13), (14, None)),
    "Dropout": ((7, 9), (10, 11), (12, 12), (13, None)),
    "Einsum": ((12, None),),
    "Elu": ((6, None),),
    "Equal": ((7, 10), (11, 12), (13, None)),
    "Erf": ((9, 12), (13, None)),
    "Exp": ((6, 12), (13, None)),
    "Expand": ((8, 12), (13, None)),
    "EyeLike": ((9, None),),
    "Flatten": ((1, 8), (9, 10), (11, 12), (13, None)),
    "Floor": ((6, 12), (13, None)),
    "Gather": ((1, 10), (11, 12), (13, None)),
    "GatherElements": ((11, 12), (13, None)),
    "GatherND": ((11, 11), (12, 12), (13, None)),
    "Gelu": ((20, None),),
    "Gemm": ((7, 8), (9, 10), (11, 12), (13, None)),
    "GlobalAveragePool": ((1, None),),
    "GlobalMaxPool": ((1, None),),
    "Greater": ((7, 8), (9, 12), (13, None)),
    "GreaterOrEqual": ((12, 15), (16, None)),
    "GridSample": ((16, 19), (20, 21), (22, None)),
    "HardSigmoid": ((6, 21), (22, None)),
    "HardSwish": ((14, 21), (22, None)),
    "Identity": ((1, 12), (13, 13), (14, 18), (19, None)),
    "InstanceNormalization": ((6, None),),
    "IsInf": ((10, 19), (20, None)),
    "IsNaN": ((9, 12), (13, 19), (20, None)),
    "LRN": ((1, 12), (13, None)),
    "LayerNormalization": ((1, 16), (17, None)),
    "LeakyRelu": ((6, 15), (16, None)),
    "Less": ((7, 8), (9, 12), (13, None)),
    "LessOrEqual": ((12, 15), (16, None)),
    "Log": ((6, 12), (13, None)),
    "LogSoftmax": ((1, 10), (11, 12), (13, None)),
    "MatMul": ((1, 8), (9, 12), (13, None)),
    "Max": ((6, 11), (12, 12), (13, None)),
    "MaxPool": ((1, 7), (8, 9), (10, 10), (11, 11), (12, None)),
    "Min": ((6, 11), (12, 12), (13, None)),
    "Mod": ((10, 12), (13, None)),
    "Mul": ((7, 12), (13, 13), (14, None)),
    "Neg": ((6, 12), (13, None)),
    "NonZero": ((9, 12), (13, None)),
    "Not": ((1, None),),
    "OneHot": ((11, None),),
    "Or": ((7, None),),
    "PRelu": ((7, 8), (9, 15), (16, None)),
    "Pad": ((2, 10), (11, 12), (13, 17), (18, None)),
    "Pow": ((7, 11), (12, 12), (13, 14), (15, None)),
    "RandomNormal": ((1, None),),
    "RandomNormalLike": ((1, None),),
    "RandomUniform": ((1, None),),
    "RandomUniformLike": ((1, None),),
    "Range": ((11, None),),
    "Reciprocal": ((6, 12), (13, None)),
    "ReduceL1": ((1, 17), (18, None)),
    "ReduceL2": ((1, 17), (18, None)),
    "ReduceLogSum": ((1, 17), (18, None)),
    "ReduceLogSumExp": ((1, 17), (18, None)),
    "ReduceMax": ((1, 17), (18, None)),
    "ReduceMean": ((1, 17), (18, None)),
    "ReduceMin": ((1, 17), (18, None)),
    "ReduceProd": ((1, 17), (18, None)),
    "ReduceSum": ((1, 12), (13, None)),
    "ReduceSumSquare": ((1, 17), (18, None)),
    "Relu": ((6, 12), (13, 13), (14, None)),
    "Reshape": ((1, 4), (5, 12), (13, 13), (14, 18), (19, 20), (21, 22), (23, None)),
    "Resize": ((10, 10), (11, 12), (13, 17), (18, 18), (19, None)),
    "ReverseSequence": ((10, None),),
    "RoiAlign": ((10, None),),
    "Round": ((11, None),),
    "ScatterElements": ((11, 12), (13, 15), (16, 17), (18, None)),
    "ScatterND": ((11, 12), (13, 15), (16, 17), (18, None)),
    "Selu": ((6, None),),
    "Shape": ((1, 12), (13, 14), (15, 18), (19, 20), (21, 22), (23, None)),
    "Shrink": ((9, None),),
    "Sigmoid": ((6, 12), (13, None)),
    "Sign": ((13, None),),
    "Sin": ((7, None),),
    "Size": ((1, 12), (13, None)),
    "Slice": ((1, 9), (10, 10), (11, 12), (13, None)),
    "Softmax": ((1, 10), (11, 12), (13, None)),
    "Softplus": ((1, None),),
    "Softsign": ((1, None),),
    "SpaceToDepth": ((1, 12), (13, None)),
    "Split": ((2, 10), (11, 12), (13, 17), (18, None)),
    "Sqrt": ((6, 12), (13, None)),
    "Squeeze": ((1, 10), (11, 12), (13, 20), (21, 22), (23, None)),
    "Sub": ((7, 12), (13, 13), (14, None)),
    "Sum": ((6, 7), (8, 12), (13, None)),
    "Tanh": ((6, 12), (13, None)),
    "Tile": ((6, 12), (13, None)),
    "TopK": ((1, 9), (10, 10), (11, None)),
    "Transpose": ((1, 12), (13, 20), (21, 22), (23, None)),
    "Trilu": ((14, None),),
    "Unsqueeze": ((1, 10), (11, 12), (13, 20), (21, 22), (23, None)),
    "Upsample": ((7, 8), (9, 9)),
    "Where": ((9, 15), (16, None)),
    "Xor": ((7, None),),
}

# Where the float16 rows differ from the float ones; an empty tuple means no float16
# kernel at all (Clip [6, 10] and 11, CumSum [11, 13] and IsInf [10, 19] are
# float-only rows).
_FLOAT16_EXCEPTIONS: dict[str, tuple[OpsetRange, ...]] = {
    "Clip": ((12, 12), (13, None)),
    "CumSum": ((14, None),),
    "EyeLike": (),
    "GridSample": (),
    "IsInf": ((20, None),),
    "Range": (),
    "RoiAlign": (),
}

CUDA_FLOAT16_KERNELS: dict[str, tuple[OpsetRange, ...]] = {
    op: _FLOAT16_EXCEPTIONS.get(op, ranges)
    for op, ranges in CUDA_FLOAT_KERNELS.items()
    if _FLOAT16_EXCEPTIONS.get(op, ranges)
}


def has_cuda_kernel(op_type: str, version: int, *, float16: bool = False) -> bool:
    """Whether a CUDA kernel for `op_type` (ai.onnx) covers `version` for float or float16."""
    table = CUDA_FLOAT16_KERNELS if float16 else CUDA_FLOAT_KERNELS
    return any(since <= version and (until is None or version <= until) for since, until in table.get(op_type, ()))


# --- attribute rules ---------------------------------------------------------------
# A rule gets a node and the onnxruntime-gpu version it will run on, and returns what
# is wrong with it on the CUDA EP, or None.
AttributeRule = Callable[[onnx.NodeProto, OrtVersion], str | None]

_SAME_PADS = ("SAME_UPPER", "SAME_LOWER")


def _attr(node: onnx.NodeProto, name: str, default: Any) -> Any:
    for attribute in node.attribute:
        if attribute.name == name:
            value = helper.get_attribute_value(attribute)
            return value.decode() if isinstance(value, bytes) else value
    return default


def _ints(node: onnx.NodeProto, name: str) -> list[int]:
    return [int(v) for v in _attr(node, name, [])]


def _asymmetric(pads: list[int]) -> bool:
    half = len(pads) // 2
    return pads[:half] != pads[half:]


def conv_transpose_pads(node: onnx.NodeProto, ort: OrtVersion) -> str | None:
    """ConvTransposeNeedFallbackToCPU in cuda_execution_provider.cc sends ConvTranspose
    to the CPU when its pads are asymmetric or auto_pad is SAME_*."""
    pads = _ints(node, "pads")
    if pads and _asymmetric(pads):
        return f"asymmetric pads {pads} fall back to CPU"
    auto_pad = _attr(node, "auto_pad", "NOTSET")
    if auto_pad in _SAME_PADS:
        return f"auto_pad={auto_pad} falls back to CPU (its pads may be asymmetric)"
    return None


def cast_to_string(node: onnx.NodeProto, ort: OrtVersion) -> str | None:
    """CastNeedFallbackToCPU in cuda_execution_provider.cc: no string casts on CUDA."""
    if _attr(node, "to", None) == TensorProto.STRING:
        return "a cast to string falls back to CPU"
    return None


_SCATTER_REDUCTIONS = ("none", "add", "mul", "max", "min")


def scatter_elements_reduction(node: onnx.NodeProto, ort: OrtVersion) -> str | None:
    """The CUDA kernel reads `reduction` (atomic add/mul/max/min) from onnxruntime-gpu
    1.18.0 on (PR #19198); the 1.17 kernel does not read it and just assigns."""
    reduction = _attr(node, "reduction", "none")
    if reduction not in _SCATTER_REDUCTIONS:
        return f"reduction={reduction!r} is rejected by the CUDA kernel"
    if reduction != "none" and ort < (1, 18):
        return f"reduction={reduction!r} is ignored by CUDA before onnxruntime-gpu 1.18"
    return None


def max_pool_dilations(node: onnx.NodeProto, ort: OrtVersion) -> str | None:
    """onnxruntime issue #29637: the CUDA MaxPool index kernel gives wrong values and
    Indices when dilations > 1 meet non-zero begin pads (closed July 2026; the first
    release with the fix was not confirmed, so this is flagged on every version)."""
    dilations = _ints(node, "dilations")
    if not any(d > 1 for d in dilations):
        return None
    begin_pads = _ints(node, "pads")[: len(dilations)]
    if any(p > 0 for p in begin_pads) or _attr(node, "auto_pad", "NOTSET") in _SAME_PADS:
        return "dilations > 1 with begin padding give wrong results on CUDA (onnxruntime#29637)"
    return None


def average_pool_cudnn(node: onnx.NodeProto, ort: OrtVersion) -> str | None:
    """Before onnxruntime-gpu 1.29 AveragePool ran on cuDNN, whose descriptor keeps one
    symmetric pad per axis and no dilation (PR #29631 added a custom kernel)."""
    if ort >= (1, 29):
        return None
    reasons = []
    pads = _ints(node, "pads")
    if pads and _asymmetric(pads):
        reasons.append(f"asymmetric pads {pads}")
    if _attr(node, "auto_pad", "NOTSET") in _SAME_PADS:
        reasons.append("auto_pad=SAME_*")
    if _attr(node, "ceil_mode", 0):
        reasons.append("ceil_mode=1")
    if any(d > 1 for d in _ints(node, "dilations")):
        reasons.append("dilations > 1")
    if not reasons:
        return None
    return f"wrong results on CUDA before onnxruntime-gpu 1.29 ({', '.join(reasons)})"


def lrn_cudnn_limits(node: onnx.NodeProto, ort: OrtVersion) -> str | None:
    """cuda/nn/lrn.cc enforces an odd size > 0, alpha > 0 and beta > 0; cuDNN's LRN
    descriptor takes size 1..16, beta >= 0.01 and bias (k) >= 1e-5. Outside these the
    CUDA session fails to create."""
    size = int(_attr(node, "size", 0))
    alpha = float(_attr(node, "alpha", 1e-4))
    beta = float(_attr(node, "beta", 0.75))
    bias = float(_attr(node, "bias", 1.0))
    if 1 <= size <= 16 and size % 2 == 1 and alpha > 0 and beta >= 0.01 and bias >= 1e-5:
        return None
    return (
        f"size={size}, alpha={alpha}, beta={beta}, bias={bias} are outside the CUDA LRN "
        "limits (odd size 1..16, alpha > 0, beta >= 0.01, bias >= 1e-5)"
    )


ATTRIBUTE_RULES: dict[str, tuple[AttributeRule, ...]] = {
    "AveragePool": (average_pool_cudnn,),
    "Cast": (cast_to_string,),
    "ConvTranspose": (conv_transpose_pads,),
    "LRN": (lrn_cudnn_limits,),
    "MaxPool": (max_pool_dilations,),
    "ScatterElements": (scatter_elements_reduction,),
}


# --- the audit ---------------------------------------------------------------------
def _default_opset(model: onnx.ModelProto) -> int:
    for opset in model.opset_import:
        if opset.domain in ("", "ai.onnx"):
            return opset.version
    raise ValueError("the model imports no default-domain (ai.onnx) opset")


def _since_version(op_type: str, opset: int) -> int:
    """The opset version of the schema a node resolves to, as ORT matches kernels."""
    try:
        return defs.get_schema(op_type, opset, "").since_version
    except defs.SchemaError:
        return opset


def _element_types(model: onnx.ModelProto) -> dict[str, int]:
    try:
        graph = shape_inference.infer_shapes(model).graph
    except (shape_inference.InferenceError, ValueError):
        graph = model.graph
    types = {init.name: init.data_type for init in graph.initializer}
    for value in (*graph.input, *graph.output, *graph.value_info):
        if value.type.HasField("tensor_type"):
            types[value.name] = value.type.tensor_type.elem_type
    return types


def _is_float16(names: Iterable[str], types: dict[str, int]) -> bool:
    return any(types.get(name) == TensorProto.FLOAT16 for name in names)


def cuda_unsupported(model: onnx.ModelProto, *, ort_version: OrtVersion = NEWEST_CHECKED_ORT) -> list[str]:
    """One line per node of the main graph that will not run (correctly) on the CUDA EP.

    A node is checked against `CUDA_FLOAT16_KERNELS` when one of its inputs or outputs
    is float16 and against `CUDA_FLOAT_KERNELS` otherwise, at the model's ai.onnx opset,
    then against `ATTRIBUTE_RULES` for the onnxruntime-gpu `ort_version` it will run on.
    """
    opset = _default_opset(model)
    types = _element_types(model)
    problems = []
    for index, node in enumerate(model.graph.node):
        where = f"node '{node.name or f'#{index}'}' ({node.op_type})"
        if node.domain not in ("", "ai.onnx"):
            problems.append(f"{where}: domain '{node.domain}' is outside the ai.onnx table")
            continue
        if node.op_type == "Constant":
            continue
        float16 = _is_float16((*node.input, *node.output), types)
        if not has_cuda_kernel(node.op_type, _since_version(node.op_type, opset), float16=float16):
            kind = "CUDA float16 kernel" if float16 else "CUDA kernel"
            problems.append(f"{where}: no {kind} for opset {opset}")
            continue
        found = [rule(node, ort_version) for rule in ATTRIBUTE_RULES.get(node.op_type, ())]
        if any(found):
            problems.append(f"{where}: " + "; ".join(text for text in found if text))
    return problems
