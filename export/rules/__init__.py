"""Every op the reverse pass can differentiate, in one table: op type -> its reverse rule and preparer.

Each rule is a small function in the module of its family (conv, pooling,
resize, linear, normalization, activations, arithmetic, shapes) and is tested alone against
central finite differences and torch autograd (tests/test_rules.py). An op
missing here is an `UnsupportedOperator` naming the node, never a silently
wrong gradient.

Shapes are dynamic (every octave has another size), so sizes that depend on the
image are computed in the graph from `Shape`; channel counts and kernel sizes
are static and come from shape inference and the weights.
"""

from __future__ import annotations

from dreamstream.export.rules import activations, arithmetic, conv, linear, normalization, pooling, resize, shapes
from dreamstream.export.rules.context import OpRule

RULES: dict[str, OpRule] = {
    # convolution and pooling
    "Conv": OpRule(conv.conv),
    "MaxPool": OpRule(pooling.max_pool, prepare=pooling.add_maxpool_indices),
    "AveragePool": OpRule(pooling.average_pool),
    "GlobalAveragePool": OpRule(pooling.global_average_pool),
    "GlobalMaxPool": OpRule(pooling.global_max_pool),
    "ReduceMean": OpRule(pooling.reduce_mean),
    "ReduceMax": OpRule(pooling.reduce_max),
    "ReduceSum": OpRule(pooling.reduce_sum),
    "Resize": OpRule(resize.resize),
    # matrix products
    "MatMul": OpRule(linear.matmul),
    "Gemm": OpRule(linear.gemm),
    # normalisation
    "BatchNormalization": OpRule(normalization.batch_norm),
    "LRN": OpRule(normalization.lrn, prepare=normalization.decompose_lrn),
    "LayerNormalization": OpRule(normalization.layer_norm, prepare=normalization.add_layer_norm_statistics),
    "InstanceNormalization": OpRule(normalization.instance_norm),
    # activations
    "Relu": OpRule(activations.relu),
    "LeakyRelu": OpRule(activations.leaky_relu),
    "Clip": OpRule(activations.clip),
    "Sigmoid": OpRule(activations.sigmoid),
    "Tanh": OpRule(activations.tanh),
    "HardSigmoid": OpRule(activations.hard_sigmoid),
    "HardSwish": OpRule(activations.hard_swish),
    "PRelu": OpRule(activations.prelu),
    "Elu": OpRule(activations.elu),
    "Selu": OpRule(activations.selu),
    "Softplus": OpRule(activations.softplus),
    "Erf": OpRule(activations.erf),
    "Softmax": OpRule(activations.softmax),
    "LogSoftmax": OpRule(activations.log_softmax),
    # other pointwise functions
    "Exp": OpRule(activations.exp),
    "Log": OpRule(activations.log),
    "Sqrt": OpRule(activations.sqrt),
    "Reciprocal": OpRule(activations.reciprocal),
    "Abs": OpRule(activations.abs_),
    "Pow": OpRule(activations.pow_),
    "Cast": OpRule(activations.cast),
    # arithmetic
    "Add": OpRule(arithmetic.add),
    "Sub": OpRule(arithmetic.add),
    "Sum": OpRule(arithmetic.add),
    "Mul": OpRule(arithmetic.mul),
    "Div": OpRule(arithmetic.div),
    "Neg": OpRule(arithmetic.neg),
    "Mean": OpRule(arithmetic.mean),
    "Max": OpRule(arithmetic.extremum),
    "Min": OpRule(arithmetic.extremum),
    # moving values around
    "Identity": OpRule(shapes.identity),
    "Dropout": OpRule(shapes.identity),
    "Reshape": OpRule(shapes.reshape),
    "Flatten": OpRule(shapes.reshape),
    "Squeeze": OpRule(shapes.reshape),
    "Unsqueeze": OpRule(shapes.reshape),
    "Transpose": OpRule(shapes.transpose),
    "Concat": OpRule(shapes.concat),
    "Pad": OpRule(shapes.pad),
    "Gather": OpRule(shapes.gather),
    "Slice": OpRule(shapes.slice_),
    "Split": OpRule(shapes.split),
    "Expand": OpRule(shapes.expand),
    "Tile": OpRule(shapes.tile),
    "Where": OpRule(shapes.where),
}
