"""Hypothesis strategies shared by the property tests (imported as ``strategies``: pytest puts
this folder on sys.path)."""

from __future__ import annotations

from hypothesis import strategies as st

ELEMENTWISE = ["tanh", "sigmoid", "softplus", "sin", "cos", "relu", "elu", "gelu", "swish",
               "leaky_relu", "square", "abs"]


@st.composite
def vector_expr(draw, depth: int, functions: tuple[str, ...] = tuple(ELEMENTWISE)) -> str:
    """A formula of shape (m,), built from the declared names W (m, d), V (m, m), b, v (m,),
    s and x (d,), nested ``depth`` deep, with elementwise functions drawn from ``functions``."""
    if depth == 0:
        return draw(st.sampled_from(["(W @ x)", "b", "v", "(W @ tanh(x))"]))
    kind = draw(st.sampled_from(["fn", "add", "mul", "scale", "softmax", "affine", "div"]))
    inner = draw(vector_expr(depth - 1, functions))
    if kind == "fn":
        return f"{draw(st.sampled_from(functions))}({inner})"
    if kind in ("add", "mul"):
        return f"({inner} {'+' if kind == 'add' else '*'} {draw(vector_expr(depth - 1, functions))})"
    if kind == "scale":
        return f"(s * {inner})"
    if kind == "softmax":
        return f"softmax({inner})"
    if kind == "div":
        return f"({inner} / (1 + square({draw(vector_expr(depth - 1, functions))})))"
    return f"(V @ {inner} + b)"
