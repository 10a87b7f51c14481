"""Every op the reverse pass can differentiate, in one table: op type -> its reverse rule and preparer.

Each rule is a small function in the module of its family (conv, pooling,
normalization, activations, arithmetic, shapes) and is tested alone against
central finite differences and torch autograd (tests/test_rules.py). An op
missing here is an `UnsupportedOperator` naming the node, never a silently
wrong gradient.

Shapes are dynamic (every octave has another size), so sizes that depend on the
image are computed in the graph from `Shape`; channel counts and kernel sizes
are static and come from shape inference and the weights.
"""

from __future__ import annotations

from dreamstream.export.rules import activations, arithmetic, conv, normalization, pooling, shapes
from dreamstream.export.rules.context import OpRule

RULES: dict[str, OpRule] = {
    # convolution and pooling
    "Conv": OpRule(conv.conv),
    "MaxPool": OpRule(pooling.max_pool, prepare=pooling.add_maxpool_indices),
    "AveragePool": OpRule(pooling.average_pool),
    "GlobalAveragePool": OpRule(pooling.global_average_pool),
    "ReduceMean": OpRule(pooling.reduce_mean),
    # normalisation
    "BatchNormalization": OpRule(normalization.batch_norm),
    "LRN": OpRule(normalization.lrn, prepare=normalization.decompose_lrn),
    # activations
    "Relu": OpRule(activations.relu),
    "LeakyRelu": OpRule(activations.leaky_relu),
    "Clip": OpRule(activations.clip),
    "Sigmoid": OpRule(activations.sigmoid),
    "Tanh": OpRule(activations.tanh),
    "HardSigmoid": OpRule(activations.hard_sigmoid),
    "HardSwish": OpRule(activations.hard_swish),
    # arithmetic
    "Add": OpRule(arithmetic.add),
    "Sub": OpRule(arithmetic.add),
    "Sum": OpRule(arithmetic.add),
    "Mul": OpRule(arithmetic.mul),
    "Div": OpRule(arithmetic.div),
    "Neg": OpRule(arithmetic.neg),
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
}
