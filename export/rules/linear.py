"""Matrix products: MatMul (batched, broadcasting) and Gemm (a classifier head's Linear)."""

from __future__ import annotations

import onnx

from dreamstream.export.rules.context import (
    Grads,
    RuleContext,
    UnsupportedOperator,
    attr,
    rank_of,
    unbroadcast,
)


def _swap_last_two(ctx: RuleContext, node: onnx.NodeProto, tensor: str) -> str:
    rank = rank_of(ctx, node, tensor)
    perm = [*range(rank - 2), rank - 1, rank - 2]
    return ctx.builder.op("Transpose", tensor, hint="matmul_swap", perm=perm)


def matmul(ctx: RuleContext, node: onnx.NodeProto, dy: Grads, wanted: set[int]) -> dict[int, str]:
    # y = a b: da = dy b^T, db = a^T dy, each summed over the batch dims it was broadcast along.
    a, b, y = node.input[0], node.input[1], node.output[0]
    if rank_of(ctx, node, a) < 2 or rank_of(ctx, node, b) < 2:
        raise UnsupportedOperator(node, "MatMul of a 1-D operand is not supported")
    g = ctx.builder
    grads = {}
    if 0 in wanted:
        grad = g.op("MatMul", dy[0], _swap_last_two(ctx, node, b), hint="matmul_grad_a")
        grads[0] = unbroadcast(ctx, node, grad, a, y, matrix_dims=2)
    if 1 in wanted:
        grad = g.op("MatMul", _swap_last_two(ctx, node, a), dy[0], hint="matmul_grad_b")
        grads[1] = unbroadcast(ctx, node, grad, b, y, matrix_dims=2)
    return grads


def gemm(ctx: RuleContext, node: onnx.NodeProto, dy: Grads, wanted: set[int]) -> dict[int, str]:
    # y = alpha a' b' + beta c with a' = a^T if transA (b' likewise); each gradient is one Gemm.
    a, b = node.input[0], node.input[1]
    alpha, beta = attr(node, "alpha", 1.0), attr(node, "beta", 1.0)
    trans_a, trans_b = attr(node, "transA", 0), attr(node, "transB", 0)
    g = ctx.builder
    grads = {}
    if 0 in wanted:
        if trans_a:  # da = alpha b' dy^T
            grads[0] = g.op("Gemm", b, dy[0], hint="gemm_grad_a", alpha=alpha, transA=trans_b, transB=1)
        else:  # da = alpha dy b'^T
            grads[0] = g.op("Gemm", dy[0], b, hint="gemm_grad_a", alpha=alpha, transB=1 - trans_b)
    if 1 in wanted:
        if trans_b:  # db = alpha dy^T a'
            grads[1] = g.op("Gemm", dy[0], a, hint="gemm_grad_b", alpha=alpha, transA=1, transB=trans_a)
        else:  # db = alpha a'^T dy
            grads[1] = g.op("Gemm", a, dy[0], hint="gemm_grad_b", alpha=alpha, transA=1 - trans_a)
    if 2 in wanted:
        scaled = dy[0] if beta == 1.0 else g.op("Mul", dy[0], g.const(beta))
        grads[2] = unbroadcast(ctx, node, scaled, node.input[2], node.output[0])
    return grads
