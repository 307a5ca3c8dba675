"""The SymPy vocabulary of symgrad: elementwise functions and tensor operations.

Every symbol stands for a whole tensor (a scalar, a vector or a matrix); SymPy's own arithmetic
(``Add``, ``Mul``, ``Pow``) and elementwise functions (``exp``, ``log``, ...) act elementwise with
scalar broadcasting, as NumPy does. Operations that are not elementwise are the ``TensorOp``
classes below; their arguments keep their order, so ``MatProd(W, x)`` is never reordered.

Each class carries ``numpy``: how to compute it on float64 NumPy values for one sample. The
reference evaluator uses it; printers for LaTeX and code have their own ``_print_<Class>``.
"""

from __future__ import annotations

import math

import numpy as np
import sympy as sp

# ---------------------------------------------------------------------------- elementwise


class Elementwise(sp.Function):
    """An elementwise function; ``kinks`` lists the argument values where it is not smooth."""

    kinks: tuple = ()

    @classmethod
    def numpy(cls, *args):
        raise NotImplementedError(cls.__name__)


class Sigmoid(Elementwise):
    """σ(z) = 1 / (1 + e^{−z});  σ'(z) = σ(z)(1 − σ(z));  σ(−z) = 1 − σ(z)."""

    nargs = 1

    @classmethod
    def eval(cls, z):
        if z.could_extract_minus_sign():
            return 1 - cls(-z)
        return None

    def fdiff(self, argindex=1):
        s = Sigmoid(self.args[0])
        return s * (1 - s)

    @classmethod
    def numpy(cls, z):
        out = np.empty_like(z, dtype=np.float64) if np.ndim(z) else None
        if out is None:
            return 1.0 / (1.0 + math.exp(-z)) if z >= 0 else math.exp(z) / (1.0 + math.exp(z))
        pos = z >= 0
        out[pos] = 1.0 / (1.0 + np.exp(-z[pos]))
        ez = np.exp(z[~pos])
        out[~pos] = ez / (1.0 + ez)
        return out


class Step(Elementwise):
    """The derivative of relu: 1 where z > 0, else 0 (so relu'(0) = 0, PyTorch's convention)."""

    nargs = 1
    kinks = (0,)

    def fdiff(self, argindex=1):
        return sp.S.Zero

    @classmethod
    def numpy(cls, z):
        return np.where(np.asarray(z) > 0, 1.0, 0.0)


class Relu(Elementwise):
    """relu(z) = max(z, 0);  relu'(z) = step(z), with relu'(0) = 0."""

    nargs = 1
    kinks = (0,)

    def fdiff(self, argindex=1):
        return Step(self.args[0])

    @classmethod
    def numpy(cls, z):
        return np.maximum(z, 0.0)


class LeakyRelu(Elementwise):
    """leaky_relu(z, α) = z for z > 0, α z otherwise;  derivative α + (1 − α) step(z)."""

    nargs = 2
    kinks = (0,)

    def fdiff(self, argindex=1):
        z, alpha = self.args
        return alpha + (1 - alpha) * Step(z)

    @classmethod
    def numpy(cls, z, alpha):
        return np.where(np.asarray(z) > 0, z, alpha * np.asarray(z))


class Softplus(Elementwise):
    """softplus(z) = log(1 + e^z), computed as max(z, 0) + log1p(e^{−|z|});  derivative σ(z)."""

    nargs = 1

    def fdiff(self, argindex=1):
        return Sigmoid(self.args[0])

    @classmethod
    def numpy(cls, z):
        return np.maximum(z, 0.0) + np.log1p(np.exp(-np.abs(z)))


class Elu(Elementwise):
    """elu(z) = z for z > 0, e^z − 1 otherwise (α = 1);  derivative 1 or elu(z) + 1."""

    nargs = 1
    kinks = (0,)

    def fdiff(self, argindex=1):
        z = self.args[0]
        return Step(z) + (1 - Step(z)) * (Elu(z) + 1)

    @classmethod
    def numpy(cls, z):
        z = np.asarray(z, dtype=np.float64)
        return np.where(z > 0, z, np.expm1(np.minimum(z, 0.0)))


_GELU_C = sp.sqrt(2 / sp.pi)


def gelu_body(z: sp.Expr) -> sp.Expr:
    """GELU, tanh approximation: z/2 (1 + tanh(√(2/π) (z + 0.044715 z³)))."""
    return z / 2 * (1 + sp.tanh(_GELU_C * (z + sp.Float("0.044715") * z**3)))


class Gelu(Elementwise):
    """gelu(z), tanh approximation; SymPy differentiates its body."""

    nargs = 1

    def fdiff(self, argindex=1):
        s = sp.Dummy("s", real=True)
        return sp.diff(gelu_body(s), s).subs(s, self.args[0])

    @classmethod
    def numpy(cls, z):
        c = math.sqrt(2.0 / math.pi)
        return 0.5 * z * (1.0 + np.tanh(c * (z + 0.044715 * z**3)))


class Clip(Elementwise):
    """clip(u, lo, hi): u limited to [lo, hi]; derivative in u is 1 inside, 0 outside."""

    nargs = 3

    def fdiff(self, argindex=1):
        u, lo, hi = self.args
        return Step(u - lo) * Step(hi - u)

    @classmethod
    def numpy(cls, u, lo, hi):
        return np.clip(u, lo, hi)


class Huber(Elementwise):
    """huber(r, δ) = r²/2 for |r| ≤ δ, δ(|r| − δ/2) otherwise;  derivative clip(r, −δ, δ)."""

    nargs = 2

    def fdiff(self, argindex=1):
        r, d = self.args
        return Clip(r, -d, d)

    @classmethod
    def numpy(cls, r, d):
        a = np.abs(r)
        return np.where(a <= d, 0.5 * np.asarray(r) ** 2, d * (a - 0.5 * d))


class UserFunction(Elementwise):
    """Base of the functions a spec defines in ``[functions]`` (a body in one variable ``z``).

    Subclasses are made by :func:`make_user_function`; SymPy differentiates the body.
    """

    nargs = 1
    body: sp.Expr
    variable: sp.Symbol

    def expand_body(self) -> sp.Expr:
        return self.body.xreplace({self.variable: self.args[0]})

    def fdiff(self, argindex=1):
        return sp.diff(self.body, self.variable).xreplace({self.variable: self.args[0]})


def make_user_function(name: str, variable: sp.Symbol, body: sp.Expr) -> type[UserFunction]:
    """A new elementwise function class called ``name`` (already validated) with ``body``."""
    return type(name, (UserFunction,), {"body": body, "variable": variable, "nargs": 1})


# ----------------------------------------------------------------------------- tensor ops


class TensorOp(sp.Function):
    """An operation that is not elementwise. Arguments keep their order."""

    @classmethod
    def numpy(cls, *args):
        raise NotImplementedError(cls.__name__)


class MatProd(TensorOp):
    """A @ B with NumPy's rules for 1-D and 2-D operands (matrix·vector, vector·vector, ...)."""

    nargs = 2

    @classmethod
    def numpy(cls, a, b):
        return np.asarray(a) @ np.asarray(b)


class Transposed(TensorOp):
    """Aᵀ of a matrix."""

    nargs = 1

    @classmethod
    def eval(cls, a):
        if isinstance(a, Transposed):
            return a.args[0]
        return None

    @classmethod
    def numpy(cls, a):
        return np.asarray(a).T


class Outer(TensorOp):
    """a bᵀ of two vectors: the matrix with entries a_i b_j."""

    nargs = 2

    @classmethod
    def numpy(cls, a, b):
        return np.outer(a, b)


class SumAll(TensorOp):
    """Σ_i u_i over every entry of u."""

    nargs = 1

    @classmethod
    def numpy(cls, u):
        return np.sum(u)


class Softmax(TensorOp):
    """softmax(z)_i = e^{z_i} / Σ_j e^{z_j}, computed with the maximum subtracted."""

    nargs = 1

    @classmethod
    def numpy(cls, z):
        e = np.exp(z - np.max(z))
        return e / np.sum(e)


class LogSumExp(TensorOp):
    """log Σ_j e^{z_j} = m + log Σ_j e^{z_j − m} with m = max z (stable)."""

    nargs = 1

    @classmethod
    def numpy(cls, z):
        m = np.max(z)
        return m + np.log(np.sum(np.exp(z - m)))


class Pick(TensorOp):
    """z_y: the entry of vector z at the integer class label y."""

    nargs = 2

    @classmethod
    def numpy(cls, z, y):
        return np.asarray(z)[int(y)]


class OneHot(TensorOp):
    """The one-hot vector of label y with C classes (C is an integer constant)."""

    nargs = 2

    @classmethod
    def numpy(cls, y, c):
        out = np.zeros(int(c))
        out[int(y)] = 1.0
        return out


class Broadcast(TensorOp):
    """A scalar s spread to a tensor of the given shape: s·1 (shape given by integer args)."""

    @classmethod
    def numpy(cls, s, *shape):
        return np.full(tuple(int(d) for d in shape), float(s))


ELEMENTWISE_SYMPY = {
    sp.exp: np.exp, sp.log: np.log, sp.sin: np.sin, sp.cos: np.cos, sp.tanh: np.tanh,
    sp.Abs: np.abs, sp.sign: np.sign,
}
"""SymPy's own elementwise functions that may appear in a derivation, with their NumPy twins."""

KINKED = (Relu, Step, LeakyRelu, Elu, Clip, Huber, sp.Abs, sp.sign)
"""Functions that are not differentiable somewhere; the checker avoids and masks their kinks."""
