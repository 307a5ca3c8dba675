"""The training kernel: one forward + backward pass over a batch as explicit loops into buffers.

``_step(params…, X, Y, grads, bufs) -> batch loss`` is what ``fit`` calls once per minibatch and
``loss_and_grad`` once per call. Every value of the derivation (each forward and backward step)
has a buffer of shape (rows, *shape) — (rows, 1) for a per-sample scalar — allocated once per
``fit`` call by ``_buffers``; the gradients go into the arrays of ``_gradients``. Nothing is
allocated inside ``_step``, so a training epoch allocates nothing per step.

Schedule. The steps run in derivation order inside **one loop over the samples** (forward and
backward fused per sample, each step an explicit loop nest over its own indices, reductions such
as W·x, Σ and logsumexp as inner loops). A matrix product between a parameter matrix with at
least ``GEMM_MIN_SIZE`` entries and a batch of vectors is instead one BLAS call
(``np.dot(A, B, out)``) for the whole batch; it ends the open sample loop, and the next steps
start a new one. Parameter gradients that are batch outer products of such a size (δ xᵀ summed
over the samples) are BLAS calls after the last loop. Measured (benchmarks/gemm_threshold.py,
2 cores, float32): a batch product beats the per-sample loops from about 8 matrix entries on
(2–15× for 10–10⁵ entries at batch 32–256); below that (W1's 1×3 linear model) the fused loop
is ahead, since a BLAS call costs more than the handful of multiply-adds it replaces. The input
batch X times a wide parameter matrix W is, for a small batch, asked of BLAS the other way round
(W Xᵀ into a scratch buffer, copied back transposed): see ``TRANSPOSED_PRODUCT_MAX_ROWS``.

With plain gradient descent (``_step``'s ``_lr`` > 0, as ``fit`` passes for gd and sgd), a
batch outer-product gradient of at least ``OUTER_KERNEL_MIN_ROWS`` × ``OUTER_KERNEL_MIN_COLS``
(the first layer of an MNIST network) is never formed: ``_outer_acc``, a loop over 4 rows × 4
samples at a time, adds −(lr/n)·Σ δ vᵀ to the parameter in one pass, where BLAS would write the
gradient and ``_update`` read it back (``python benchmarks/outer_kernel.py``, one core, float32,
rows from memory: 784→64 at batch 32, 1875 steps: np.dot + update 97.1 ms, fused 69.6 ms;
784→128 b32 175.7 → 122.1 ms; 64×256 level, 10×784 in cache 0.87×, 10×128 0.5×). Other
optimizers keep BLAS: there the loop, faster alone, was level with it inside a whole Adam step
(in-process fit of W4 427 vs 439 ms, W6 304 vs 308 ms).

Gradients are batch sums. A small one (at most ``LOCAL_GRAD_SIZE`` entries) is summed in local
variables, one per entry, stored after the sample loop: with nothing stored per sample but the
values themselves, the sample loop of a tiny model vectorizes across samples (W1: 3.7 → 1.8 ms).
Larger ones add a row δ_j·vᵀ at a time, skipping rows where δ_j is 0 (inactive ReLU units).

``_step`` is compiled with ``fastmath={"reassoc", "contract"}``: sums may be reordered and
multiply-adds fused (so the reductions vectorize, as BLAS reorders them too); no flag assumes
away NaN or infinity, so divergence still shows as a non-finite loss.

Unrolled schedule. A small model (see ``UNROLL_MAX_ENTRIES``) has every loop over a value's
entries written out with literal indices: every value is a local variable per entry
(``z1_3``), every gradient a sum in locals, no BLAS and no buffer, so one sample's work is
straight-line code and the sample loop vectorizes across samples. An input of at least
``FEATURE_MAJOR_MIN_WIDTH`` entries is then read feature-major (``X[3, _i]`` of a (features,
samples) batch that ``_layout``/``fit`` make), so each of its entries is one vector load across
samples; a narrower one through the flat view. benchmarks/unroll_threshold.py, one core,
float32: a 10→5→1 MSE network (W2) 2.8 → 1.0 µs per full-batch step of 100 samples.

logsumexp(u) keeps its exponentials e^{u−m} in a buffer, so softmax(u) next to it (the δ of
softmax cross-entropy) is a division, not a second exponential (W3: 66 → 56 ms).

Per-element expressions are printed by :class:`ScalarPrinter`: every tensor leaf is replaced by
the scalar at the loop indices (``z1[_i, _j0]``, ``W1[_j0, _r]``, ``X[_i, _r]``, ``Y[_i]``).
"""

from __future__ import annotations

import itertools
import math
import re
from dataclasses import dataclass

import sympy as sp
from sympy.printing.precedence import PRECEDENCE

from symbolic.derive import Derivation, Step, shape_of
from symbolic.functions import (
    Broadcast, Elementwise, LogSumExp, MatProd, OneHot, Outer, Pick, Softmax, SumAll, Transposed,
)

from .printers import CodegenError, NumbaPrinter

GEMM_MIN_SIZE = 8
"""A parameter matrix with at least this many entries is multiplied by the batch with BLAS."""

OUTER_KERNEL_MIN_ROWS = 32
OUTER_KERNEL_MIN_COLS = 512
"""Under plain gradient descent, a batch outer-product gradient Σ δ vᵀ with at least this many
rows and columns (W1 of a 784→64 layer) is not formed: the module's register-blocked loop
``_outer_acc`` adds −(lr/n)·Σ δ vᵀ to the parameter directly (benchmarks/outer_kernel.py)."""

LOCAL_GRAD_SIZE = 8
"""A gradient with at most this many entries is summed in local variables, one per entry: with
no store inside the sample loop, the compiler can vectorize that loop across samples."""

UNROLL_MAX_ENTRIES = 128
UNROLL_MAX_STATEMENTS = 200
"""A model whose parameters have at most UNROLL_MAX_ENTRIES entries in all, and whose input and
every per-sample value at most that many each, gets the unrolled schedule (see :func:`unrolled`)
if its sample loop written out has at most UNROLL_MAX_STATEMENTS statements
(:func:`loop_statements`), since compile time grows with them (benchmarks/unroll_threshold.py,
one core, first call unrolled vs loop nests: softmax networks 2→2→10, 156 statements, 5.1 vs
4.0 s; 3→4→10, 246, 5.9 vs 4.4 s; 4→6→10, 344, 9.8 vs 4.8 s; S5's 10→5→1 has 158)."""

TRANSPOSED_PRODUCT_MAX_ROWS = 64
TRANSPOSED_PRODUCT_MIN_WIDTH = 64
"""The input batch X (n, d) times a parameter matrix W (h, d) of at least this many rows h is
taken as (W Xᵀ)ᵀ when n is at most TRANSPOSED_PRODUCT_MAX_ROWS: BLAS writes W Xᵀ into a
scratch buffer and ``_transpose_into`` copies it to the value's (n, h) buffer.
benchmarks/gemm_layout.py, one core, float32, d = 784, time of X Wᵀ over (W Xᵀ)ᵀ with the
copy: h = 64–256 at batch 32 1.23–1.35×, at batch 64 1.06–1.12×, at 128–256 0.95–1.00×;
h = 16 0.96–1.05× at every batch."""

FEATURE_MAJOR_MIN_WIDTH = 4
"""On the unrolled schedule, an input of at least this many entries is read feature-major: a
sample's entries strided by the batch size, so each is one vector load across samples."""

_ELEMENTWISE = (sp.Add, sp.Mul, sp.Pow, sp.exp, sp.log, sp.tanh, sp.sin, sp.cos, sp.Abs, sp.sign,
                Elementwise)

Shape = tuple[int, ...]


class ScalarPrinter(NumbaPrinter):
    """One scalar of an elementwise expression, in the working dtype (``_F``).

    Numba types ``2 * float32`` as float64, so every integer is printed as ``_F(n)`` except a
    positive integer exponent (``x**2`` stays a float32 multiply); ``np.where`` becomes a
    conditional expression.
    """

    def __init__(self, names: dict[sp.Symbol, str]):
        super().__init__({s: () for s in names}, set(), names)

    def _print_Integer(self, expr):
        return f"_F({int(expr)})"

    def _print_Pow(self, expr, rational=False):
        base, exp = expr.args
        if exp.is_Integer and exp > 0:
            return f"{self.parenthesize(base, PRECEDENCE['Pow'], strict=True)}**{int(exp)}"
        return super()._print_Pow(expr, rational)

    def _choose(self, cond: str, yes: str, no: str) -> str:
        return f"({yes} if {cond} else {no})"

    def _print_Step(self, expr):
        return self._choose(f"{self._print(expr.args[0])} > 0", "_F(1)", "_F(0)")

    def _print_LeakyRelu(self, expr):
        z, alpha = expr.args
        zs = self._print(z)
        return self._choose(f"{zs} > 0", zs, self._print(alpha * z))

    def _print_Elu(self, expr):
        zs = self._print(expr.args[0])
        return self._choose(f"{zs} > 0", zs, f"{self.np('expm1')}({zs})")

    def _print_Huber(self, expr):
        r, d = expr.args
        a = f"{self.np('abs')}({self._print(r)})"
        return self._choose(f"{a} <= {self._print(d)}", self._print(r**2 / 2),
                            f"{self._print(d)}*({a} - {self._print(d / 2)})")


@dataclass(frozen=True)
class Buffer:
    """A per-sample value's storage: (rows, *shape) in the working dtype."""

    name: str
    shape: Shape  # per sample; (1,) for a scalar
    max_rows: int | None = None  # at most this many rows (a scratch used for small batches)


@dataclass(frozen=True)
class KernelText:
    lines: tuple[str, ...]  # the body of _step after its prologue, indented for the function
    after: tuple[str, ...]  # … after the batch loss is taken: gradient products (and fused
    # updates, which change the parameters the loss's L2 term reads)
    buffers: tuple[Buffer, ...]
    grads: tuple[Buffer, ...]  # one per parameter (no rows dimension)
    fused: tuple[str, ...]  # parameters that _step itself updates when given _lr > 0
    feature_major: bool  # unrolled, wide input: _step reads X (float Y) as (width, samples)


def _indexing(name: str) -> re.Pattern:
    """``name[...]`` in printed code (not ``other_name[...]``), the index text as group 1."""
    return re.compile(rf"(?<![\w.]){re.escape(name)}\[([^\]]*)\]")


def _subscripts(name: str, lines: list[str]) -> list[str]:
    """The index text of every ``name[...]`` in ``lines``, e.g. ``"_i, _j0"``."""
    pattern = _indexing(name)
    return [m.group(1) for line in lines for m in pattern.finditer(line)]


def _flat_index(idx: list[str], shape: Shape) -> str:
    """The row-major offset of indices ``idx`` into an array of ``shape``."""
    if not idx:
        return "0"
    text = idx[0]
    for i, size in zip(idx[1:], shape[1:]):
        text = f"({text})*{size} + {i}"
    return text


def _flat_access(line: str, name: str, shape: Shape) -> tuple[str, bool]:
    """``line`` with every ``name[_i, a, b…]`` (per-sample shape ``shape``) written as
    ``_f_name[_i*size + flat(a, b…)]``; and whether there was one."""
    size = math.prod(shape)
    out, pos, found = [], 0, False
    for m in _indexing(name).finditer(line):
        if m.start() < pos:
            continue
        depth, end = 0, m.start() + len(name)
        for end in range(end, len(line)):  # the bracket that closes name[
            depth += {"[": 1, "]": -1}.get(line[end], 0)
            if depth == 0:
                break
        parts = _top_level_split(line[m.start() + len(name) + 1:end])
        if parts[0] != "_i":
            continue
        text = _flat_index(parts[1:], shape)
        row = "_i" if size == 1 else f"_i*{size}"
        flat = row if text == "0" else f"{row} + {text}"
        out += [line[pos:m.start()], f"_f_{name}[{flat}]"]
        pos, found = end + 1, True
    return "".join(out) + line[pos:], found


def _top_level_split(text: str) -> list[str]:
    """``text`` split at the commas outside brackets and parentheses, each part stripped."""
    parts, depth, start = [], 0, 0
    for k, c in enumerate(text):
        depth += {"[": 1, "(": 1, "]": -1, ")": -1}.get(c, 0)
        if c == "," and depth == 0:
            parts.append(text[start:k].strip())
            start = k + 1
    return parts + [text[start:].strip()]


def _single_entry(subscript: str) -> bool:
    """Whether ``subscript`` (``_i, …``) indexes a sample's only entry: 0 or a loop index
    (the loops over a one-entry shape run once, at 0)."""
    parts = _top_level_split(subscript)
    return parts[0] == "_i" and all(p == "0" or re.fullmatch(r"_[jr]\d*", p) for p in parts[1:])


def _text(item: "str | _Nest") -> list[str]:
    return item.body if isinstance(item, _Nest) else [item]


def _lines(item: "str | _Nest") -> list[str]:
    """An item of a sample loop as code: a nest with its loops."""
    return item.lines() if isinstance(item, _Nest) else [item]


def _edit(items: list["str | _Nest"], k: int, edit) -> None:
    """Apply ``edit`` to every line of ``items[k]``: a nest's body, or the line itself."""
    if isinstance(items[k], _Nest):
        items[k].body[:] = [edit(line) for line in items[k].body]
    else:
        items[k] = edit(items[k])


def _index(names: list[str]) -> str:
    return ", ".join(names)


@dataclass
class _Nest:
    """Loops over one value's indices inside the sample loop; later nests may join it."""

    shape: Shape
    idx: tuple[str, ...]
    comment: str
    body: list[str]
    writes: set[str]

    def joins(self, shape: Shape, idx: list[str], body: list[str]) -> bool:
        """Whether ``body`` may run in this nest: same loops, and it reads what this nest
        writes only at the current indices (so every value is ready when read)."""
        if (self.shape, self.idx) != (shape, tuple(idx)):
            return False
        here = f"_i, {_index(idx)}"
        return all(s == here for name in self.writes for s in _subscripts(name, body))

    def lines(self) -> list[str]:
        head = [self.comment] if self.comment else []
        return head + _Kernel.loops(self.shape, list(self.idx), self.body)


_LOOP = re.compile(r"^( *)for (_[jr]\d*) in range\((?:(\d+), )?(\d+)\):$")


def _unroll(lines: list[str]) -> list[str]:
    """``lines`` with every ``for _j… in range(…)`` loop written out, its index a literal in each
    copy; a comment inside a loop is kept in the first copy only."""
    out, k = [], 0
    while k < len(lines):
        m = _LOOP.match(lines[k])
        k += 1
        if m is None:
            out.append(lines[k - 1])
            continue
        indent, var = m.group(1), m.group(2)
        start, stop = int(m.group(3) or 0), int(m.group(4))
        body = []
        while k < len(lines) and lines[k].startswith(indent + " "):
            body.append(indent + lines[k][len(indent) + 4:])
            k += 1
        index = re.compile(rf"(?<![\w.]){var}(?!\w)")
        for value in range(start, stop):
            out += [index.sub(str(value), line) for line in _unroll(body)
                    if value == start or not line.lstrip().startswith("#")]
    return out


def loop_statements(lines: tuple[str, ...]) -> int:
    """The statements inside the sample loop of a kernel body (``KernelText.lines``)."""
    return sum(1 for line in lines if line.startswith("    ") and not line.lstrip().startswith("#"))


def unrolled(d: Derivation) -> bool:
    """Whether ``d`` may get the unrolled schedule (see the module docstring): every size within
    ``UNROLL_MAX_ENTRIES``."""
    sizes = [math.prod(v.shape) for v in d.values.values() if v.kind != "param"]
    return (sum(math.prod(p.shape) for p in d.spec.params) <= UNROLL_MAX_ENTRIES
            and max(sizes, default=1) <= UNROLL_MAX_ENTRIES)


class _Kernel:
    def __init__(self, d: Derivation, tags: dict[str, str], formulas: dict[str, str],
                 unroll: bool):
        self.d = d
        self.unrolled = unroll
        width = math.prod(d.spec.input_shape)
        self.feature_major = self.unrolled and width >= FEATURE_MAJOR_MIN_WIDTH
        # unrolled: no BLAS, every gradient summed in locals
        self.gemm_min_size = math.inf if unroll else GEMM_MIN_SIZE
        self.local_grad_size = math.inf if unroll else LOCAL_GRAD_SIZE
        self.tags = tags
        self.formulas = formulas
        self.shapes: dict[sp.Symbol, Shape] = {v.symbol: v.shape for v in d.values.values()}
        self.kinds = {v.symbol: v.kind for v in d.values.values()}
        self.classes = d.spec.classes
        self.buffers: list[Buffer] = []
        self.out: list[tuple[bool, list[str | _Nest]]] = []  # (sample loop?, items) blocks
        self.segment: list[str | _Nest] = []  # the body of the open sample loop
        self.before: list[str] = []  # lines just before the open sample loop …
        self.after: list[str] = []  # … and just after it (local gradient sums)
        self.prologue: list[str] = []  # zeroing of accumulated gradients
        self.deferred: list[str] = []  # gradient matrix products after the last loop
        self.fused: list[str] = []  # parameters updated by their gradient's _outer_acc
        self.scalars: dict[sp.Expr, sp.Symbol] = {}  # hoisted per-sample scalars (open loop)
        self.exps: dict[sp.Expr, tuple[sp.Symbol, str]] = {}  # logsumexp → (e^{u−m}, Σ) names
        self.temps: dict[sp.Expr, sp.Symbol] = {}  # hoisted per-sample tensors (buffers)
        self.names: dict[sp.Symbol, str] = {}
        self.leaves: dict[str, sp.Symbol] = {}
        self.count = 0

    # ----------------------------------------------------------------- helpers
    def shape(self, e: sp.Expr) -> Shape:
        return shape_of(e, self.shapes)

    def fresh(self, prefix: str) -> str:
        self.count += 1
        return f"{prefix}{self.count}"

    def leaf(self, code: str) -> sp.Symbol:
        """A scalar symbol printed as ``code`` (an indexed load or a local)."""
        if code not in self.leaves:
            sym = sp.Symbol(f"_leaf{len(self.leaves)}", real=True)
            self.leaves[code] = sym
            self.names[sym] = code
        return self.leaves[code]

    def print(self, e: sp.Expr) -> str:
        return ScalarPrinter(self.names).statement(e)

    def access(self, sym: sp.Symbol, idx: list[str]) -> str:
        kind, shape = self.kinds[sym], self.shapes[sym]
        if kind == "param":
            return sym.name if not shape else f"{sym.name}[{_index(idx)}]"
        if kind == "acc":
            return "_acc"
        if kind in ("input", "target"):
            if kind == "target" and self.classes is not None:
                return "Y[_i]"
            array, flat = ("X" if kind == "input" else "Y"), _flat_index(idx, shape)
            return f"{array}[{flat}, _i]" if self.feature_major else f"{array}[_i, {flat}]"
        return f"{sym.name}[_i, {_index(idx) if shape else '0'}]"

    def label(self, y: sp.Expr) -> str:
        if not (y.is_Symbol and self.kinds.get(y) == "target"):
            raise CodegenError(f"class labels must be the target, not {y}")
        return "Y[_i]"

    @staticmethod
    def loops(shape: Shape, idx: list[str], body: list[str]) -> list[str]:
        """``body`` inside one loop per dimension of ``shape`` (indices ``idx``)."""
        lines = [f"{'    ' * k}for {i} in range({size}):" for k, (i, size) in enumerate(zip(idx, shape))]
        return lines + ["    " * len(shape) + line for line in body]

    def new_value(self, name: str, shape: Shape) -> sp.Symbol:
        sym = sp.Symbol(name, real=True)
        self.shapes[sym] = shape
        self.kinds[sym] = "value"
        self.buffers.append(Buffer(name, shape or (1,)))
        return sym

    def emit(self, shape: Shape, idx: list[str], body: list[str], writes: set[str],
             comment: str = "") -> None:
        """Loops over ``shape`` running ``body`` for the current sample, joined to the previous
        loops when they have the same shape and the join is safe (see :meth:`_Nest.joins`)."""
        if not shape:
            self.segment += ([comment] if comment else []) + body
            return
        last = self.segment[-1] if self.segment else None
        if isinstance(last, _Nest) and last.joins(shape, idx, body):
            last.body += ([comment] if comment else []) + body
            last.writes |= writes
        else:
            self.segment.append(_Nest(shape, tuple(idx), comment, list(body), set(writes)))

    def close(self) -> None:
        """End the open sample loop (a whole-batch operation follows)."""
        if self.segment:
            self.out += [(False, self.before), (True, self.segment), (False, self.after)]
        self.segment, self.before, self.after = [], [], []
        self.scalars = {}

    # --------------------------------------------------------- element access
    def at(self, e: sp.Expr, idx: list[str]) -> sp.Expr:
        """The scalar of ``e`` at indices ``idx`` of the current sample (hoisting as needed)."""
        if e.is_number:
            return e
        if e.is_Symbol:
            return self.leaf(self.access(e, idx))
        if isinstance(e, Transposed):
            return self.at(e.args[0], idx[::-1])
        if isinstance(e, Outer):
            a, b = e.args
            ra = len(self.shape(a))
            return self.at(a, idx[:ra]) * self.at(b, idx[ra:])
        if isinstance(e, Broadcast):
            return self.at(e.args[0], [])
        if isinstance(e, OneHot):
            return self.leaf(f"(_one if {idx[0]} == {self.label(e.args[0])} else _zero)")
        if isinstance(e, Pick):
            z, y = e.args
            if self.unrolled:  # z_y as Σ_c [c = y]·z_c: every entry of z is a local
                label = self.label(y)
                return sp.Add(*[self.leaf(f"(_one if {c} == {label} else _zero)")
                                * self.at(z, [str(c)]) for c in range(self.shape(z)[0])])
            return self.at(z, [self.label(y)])
        if isinstance(e, Softmax):  # e^{u_j − m} / Σ e^{u − m}, the exponentials of logsumexp
            (u,) = e.args
            self.scalar(LogSumExp(u))
            exps, total = self.exps[LogSumExp(u)]
            return self.at(exps, idx) / self.leaf(total)
        if isinstance(e, (SumAll, LogSumExp)):
            return self.scalar(e)
        if isinstance(e, MatProd):
            if e in self.scalars:
                return self.scalars[e]
            sym = self.temps.get(e) or self.matprod(e)
            return self.at(sym, idx) if self.shape(e) else sym
        if isinstance(e, _ELEMENTWISE):
            return e.func(*[self.at(a, idx if self.shape(a) else []) for a in e.args])
        raise CodegenError(f"the training kernel has no rule for {type(e).__name__}: {e}")

    # ----------------------------------------------------------- reductions
    def scalar(self, e: sp.Expr) -> sp.Symbol:
        """A per-sample scalar reduction computed once in the open sample loop."""
        if e in self.scalars:
            return self.scalars[e]
        name = self.fresh("_s")
        (u,) = e.args
        shape = self.shape(u)
        idx = [f"_r{k}" for k in range(len(shape))]
        if isinstance(e, SumAll):
            term = self.print(self.at(u, idx))
            self.segment.append(f"{name} = _F(0)")
            self.segment.extend(self.loops(shape, idx, [f"{name} += {term}"]))
        else:  # logsumexp, stable: m + log Σ e^{u − m} with m the maximum; the exponentials
            # are kept for a softmax of the same vector
            if len(shape) != 1:
                raise CodegenError(f"logsumexp needs a vector, not shape {shape}: {e}")
            first = self.print(self.at(u, ["0"]))
            term = self.print(self.at(u, ["_r0"]))
            exps = self.new_value(self.fresh("_e"), shape)
            self.segment += [f"{name} = {first}",
                             f"for _r0 in range(1, {shape[0]}):",
                             f"    {name} = max({name}, {term})",
                             f"{name}_sum = _F(0)",
                             f"for _r0 in range({shape[0]}):",
                             f"    {exps.name}[_i, _r0] = np.exp({term} - {name})",
                             f"    {name}_sum += {exps.name}[_i, _r0]",
                             f"{name} = {name} + np.log({name}_sum)"]
            self.exps[e] = (exps, f"{name}_sum")
        sym = self.leaf(name)
        self.scalars[e] = sym
        return sym

    def operand(self, e: sp.Expr) -> sp.Expr:
        """A matrix-product operand as a symbol (or its transpose): compound ones get a buffer."""
        inner = e.args[0] if isinstance(e, Transposed) else e
        if inner.is_Symbol:
            return e
        shape = self.shape(e)
        sym = self.new_value(self.fresh("_t"), shape)
        idx = [f"_j{k}" for k in range(len(shape))]
        value = self.print(self.at(e, idx))
        self.emit(shape, idx, [f"{self.access(sym, idx)} = {value}"], {sym.name})
        return sym

    def param_matrix(self, e: sp.Expr) -> tuple[str, bool] | None:
        """(name, transposed) for a parameter matrix W or Wᵀ large enough for BLAS."""
        inner = e.args[0] if isinstance(e, Transposed) else e
        if not (inner.is_Symbol and self.kinds[inner] == "param"):
            return None
        shape = self.shapes[inner]
        if len(shape) != 2 or math.prod(shape) < self.gemm_min_size:
            return None
        return inner.name, isinstance(e, Transposed)

    def rows(self, e: sp.Expr) -> str | None:
        """The batch of a per-sample vector as a (n, k) array, when it is stored as one."""
        if not (e.is_Symbol and len(self.shapes[e]) == 1):
            return None
        kind = self.kinds[e]
        if kind == "input":
            return "X"
        return f"{e.name}[:n]" if kind == "value" else None

    def gemm(self, a: sp.Expr, b: sp.Expr) -> tuple[str, str] | None:
        """(batch, matrix) with batch @ matrix = the product a b for every sample, or None.

        W x → X Wᵀ and Wᵀ x → X W (x on the right); xᵀ W → X W and xᵀ Wᵀ → X Wᵀ (on the left).
        """
        weight, batch = self.param_matrix(a), self.rows(b)
        flip = True
        if weight is None or batch is None:
            weight, batch = self.param_matrix(b), self.rows(a)
            flip = False
        if weight is None or batch is None:
            return None
        name, transposed = weight
        return batch, name if transposed == flip else f"{name}.T"

    def batch_product(self, batch: str, matrix: str, out: str, width: int) -> list[str]:
        """``out[:n] = batch @ matrix`` by BLAS; the input batch X times a parameter matrix is
        taken as (matrixᵀ Xᵀ)ᵀ for up to ``TRANSPOSED_PRODUCT_MAX_ROWS`` samples."""
        line = f"np.dot({batch}, {matrix}, {out}[:n])"
        if batch != "X" or width < TRANSPOSED_PRODUCT_MIN_WIDTH:
            return [line]
        scratch = f"_p_{out}"
        self.buffers.append(Buffer(scratch, (width,), TRANSPOSED_PRODUCT_MAX_ROWS))
        flipped = matrix[:-2] if matrix.endswith(".T") else f"{matrix}.T"
        view = f"{scratch}.reshape({scratch}.size)[:{width}*n].reshape(({width}, n))"
        return [f"if n <= {TRANSPOSED_PRODUCT_MAX_ROWS}:  # small batch: (W Xᵀ)ᵀ, faster",
                f"    {scratch}_t = {view}",
                f"    np.dot({flipped}, X.T, {scratch}_t)",
                f"    _transpose_into({scratch}_t, {out}[:n])",
                "else:",
                f"    {line}"]

    def matprod(self, e: MatProd, into: sp.Symbol | None = None, comment: str = "",
                result: str = "_acc") -> sp.Symbol:
        """Compute the product ``e`` for every sample into a buffer (``into``, else a new one).

        In loops, ``result`` is what is stored: the product ``_acc`` or an expression of it.
        """
        a, b = e.args
        shape = self.shape(e)
        blas = self.gemm(a, b)
        if blas is not None:
            sym = into or self.new_value(self.fresh("_t"), shape)
            self.close()
            self.out.append((False, [*([comment] if comment else []),
                                     *self.batch_product(*blas, sym.name, shape[0])]))
            self.temps[e] = sym
            return sym
        a, b = self.operand(a), self.operand(b)
        sa = self.shape(a)
        inner = sa[-1]
        left = [f"_j{k}" for k in range(len(sa) - 1)]
        right = [f"_j{k}" for k in range(len(sa) - 1, len(shape))]
        term = self.print(self.at(a, left + ["_r"]) * self.at(b, ["_r"] + right))
        reduce = ["_acc = _F(0)", f"for _r in range({inner}):", f"    _acc += {term}"]
        if not shape:
            name = self.fresh("_s")
            self.segment += [line.replace("_acc", name) for line in reduce]
            sym = self.leaf(name)
            self.scalars[e] = sym
            return sym
        sym = into or self.new_value(self.fresh("_t"), shape)
        idx = left + right
        self.emit(shape, idx, reduce + [f"{self.access(sym, idx)} = {result}"], {sym.name},
                  comment)
        self.temps[e] = sym
        return sym

    # ------------------------------------------------------------------ steps
    def comment(self, step: Step) -> str:
        return f"# {self.tags[step.name]} {self.formulas[step.name]}"

    def value_step(self, step: Step, expr: sp.Expr) -> None:
        shape = step.shape
        sym = self.new_value(step.name, shape)
        # a product W·u, alone or plus other terms (W x + b), is computed into the step's own
        # buffer: the other terms are added in the same loop, or in place after a BLAS call
        terms = sp.Add.make_args(expr)
        products = [t for t in terms if isinstance(t, MatProd) and t not in self.temps]
        idx = [f"_j{k}" for k in range(len(shape))]
        if shape and len(products) == 1:
            product = products[0]
            if expr == product:
                self.matprod(product, into=sym, comment=self.comment(step))
                return
            if self.gemm(*product.args) is None:
                acc = sp.Symbol(self.fresh("_acc"), real=True)
                self.shapes[acc], self.kinds[acc] = shape, "acc"
                value = self.print(self.at(expr.xreplace({product: acc}), idx))
                self.matprod(product, into=sym, comment=self.comment(step), result=value)
                del self.temps[product]  # the buffer holds the whole sum
                return
            self.matprod(product, into=sym, comment=self.comment(step))
            del self.temps[product]
            expr = expr.xreplace({product: sym})
        value = self.print(self.at(expr, idx))
        body = [f"{self.access(sym, idx)} = {value}"]
        if step.role == "loss":
            body.append(f"_total += {step.name}[_i, 0]")
        self.emit(shape, idx, body, {step.name}, "" if products and shape else self.comment(step))

    @staticmethod
    def outer_factors(expr: sp.Expr) -> tuple[sp.Expr, sp.Expr] | None:
        """(u, v) when ``expr`` is the outer product u vᵀ (or (v uᵀ)ᵀ)."""
        if isinstance(expr, Transposed) and isinstance(expr.args[0], Outer):
            return expr.args[0].args[1], expr.args[0].args[0]
        return expr.args if isinstance(expr, Outer) else None

    def batch_outer(self, expr: sp.Expr) -> tuple[str, str] | None:
        """(U, V) when the gradient is Σ_i u_i v_iᵀ of two stored batches: Uᵀ V in BLAS."""
        factors = self.outer_factors(expr)
        if factors is None:
            return None
        u, v = (self.rows(a) for a in factors)
        return None if u is None or v is None else (u, v)

    def grad_step(self, step: Step, expr: sp.Expr) -> None:
        param = self.d.spec.param(step.of)
        shape = tuple(param.shape) or (1,)
        name = step.name
        idx = [f"_j{k}" for k in range(len(shape))]
        gemm = self.batch_outer(expr) if math.prod(shape) >= self.gemm_min_size else None
        if gemm is not None and len(shape) == 2 and shape[0] >= OUTER_KERNEL_MIN_ROWS \
                and shape[1] >= OUTER_KERNEL_MIN_COLS:
            p = step.of
            keep = f"1.0 - _lr * {self.d.spec.l2!r}" if p in self.d.l2_params else "1.0"
            self.deferred += [
                self.comment(step),
                f"if _lr > 0:  # gd/sgd: {p} ← {p} − lr·(Σ/n + l2·{p}) in the same pass",
                f"    _outer_acc({gemm[0]}, {gemm[1]}, {p}, -_lr / n, {keep})",
                "else:",
                f"    np.dot({gemm[0]}.T, {gemm[1]}, {name})"]
            self.fused.append(p)
        elif gemm is not None:
            self.deferred += [self.comment(step), f"np.dot({gemm[0]}.T, {gemm[1]}, {name})"]
        elif expr != 0 and math.prod(shape) <= self.local_grad_size:
            self.segment.append(self.comment(step))
            for index in itertools.product(*(range(size) for size in shape)):
                at = [str(k) for k in index] if param.shape else []
                local = self.fresh("_g")
                self.before.append(f"{local} = _F(0)")
                self.segment.append(f"{local} += {self.print(self.at(expr, at))}")
                self.after.append(f"{name}[{_index([str(k) for k in index])}] = {local}")
        else:
            self.prologue.append(f"{name}[:] = 0")
            outer = self.outer_factors(expr)
            if outer is not None and len(shape) == 2:
                # a row δ_j·vᵀ at a time, skipped where δ_j is 0 (inactive ReLU units)
                row = self.print(self.at(outer[0], ["_j0"]))
                value = self.print(self.leaf("_d") * self.at(outer[1], ["_j1"]))
                body = [f"_d = {row}", "if _d != 0:", f"    for _j1 in range({shape[1]}):",
                        f"        {name}[_j0, _j1] += {value}"]
                self.emit(shape[:1], ["_j0"], body, {name}, self.comment(step))
            elif expr != 0:
                value = self.print(self.at(expr, idx if param.shape else []))
                self.emit(shape, idx, [f"{name}[{_index(idx)}] += {value}"], {name},
                          self.comment(step))

    def localize(self) -> None:
        """A value read only where it is computed — a per-sample scalar (or one-entry tensor)
        in its own sample loop, a tensor in its own loop nest at the nest's indices — is a
        local variable, not a buffer: a store and a reload per element saved."""
        for buffer in list(self.buffers):
            name, shape = buffer.name, buffer.shape
            users = [(loop, items) for loop, items in self.out
                     if any(_subscripts(name, _text(item)) for item in items)]
            if len(users) != 1 or not users[0][0] or _subscripts(name, self.deferred):
                continue
            items = users[0][1]
            readers = [k for k, item in enumerate(items) if _subscripts(name, _text(item))]
            subscripts = [s for k in readers for s in _subscripts(name, _text(items[k]))]
            if math.prod(shape) == 1:  # a scalar or one entry: every index is 0 (or a loop
                if not all(map(_single_entry, subscripts)):  # over range(1))
                    continue
            else:  # only its own nest, at the nest's indices
                nest = items[readers[0]]
                if len(readers) != 1 or not isinstance(nest, _Nest) or nest.shape != shape:
                    continue
                if any(s != f"_i, {_index(list(nest.idx))}" for s in subscripts):
                    continue
            for k in readers:
                _edit(items, k, lambda line: _indexing(name).sub(name, line))
            self.buffers.remove(buffer)

    def flat_views(self) -> list[str]:
        """Index the batch arrays of the sample loops through flat views with constant strides.

        ``z1[_i, _j0]`` of a (rows, 5) buffer becomes ``_f_z1[_i*5 + _j0]`` on
        ``_f_z1 = z1.reshape(z1.size)``: with the row stride a literal instead of the array's
        run-time stride, the compiler vectorizes a sample loop across samples (W1: 1.7 → 0.3 ms
        in-process). Returns the lines that make the views.
        """
        widths = {b.name: b.shape for b in self.buffers}
        for sym, kind in self.kinds.items():
            if kind == "input":
                widths["X"] = (math.prod(self.shapes[sym]),)
            elif kind == "target" and self.classes is None:
                widths["Y"] = (math.prod(self.shapes[sym]),)
        used: list[str] = []

        def flatten(line: str) -> str:
            for name, shape in widths.items():
                line, found = _flat_access(line, name, shape)
                if found and name not in used:
                    used.append(name)
            return line

        for loop, items in self.out:
            for k in range(len(items) if loop else 0):
                _edit(items, k, flatten)
        return [f"_f_{name} = {name}.reshape({name}.size)" for name in used]

    def run(self, steps: list[tuple[Step, sp.Expr]]) -> KernelText:
        for step, expr in steps:
            if step.role == "grad":
                self.grad_step(step, expr)
            else:
                self.value_step(step, expr)
        self.close()
        self.localize()
        if self.unrolled:
            self.out = [(loop, self.locals(_unroll([x for item in items for x in _lines(item)])))
                        if loop else (loop, items) for loop, items in self.out]
        lines = [*([] if self.feature_major else self.flat_views()), *self.prologue,
                 "_total = 0.0"]
        for loop, items in self.out:
            if not loop:
                lines += items
                continue
            lines.append("for _i in range(n):")
            lines += ["    " + line for item in items for line in _lines(item)]
        grads = tuple(Buffer(f"grad_{p.name}", tuple(p.shape) or (1,)) for p in self.d.spec.params)
        return KernelText(tuple(lines), tuple(self.deferred), tuple(self.buffers), grads,
                          tuple(self.fused), self.feature_major)

    def locals(self, body: list[str]) -> list[str]:
        """Unrolled ``body`` with every buffer entry ``z1[_i, 3]`` a local variable ``z1_3``
        (``_v_z1_3`` for all when such a name is taken); the buffers are dropped."""
        entries = {b.name: _indexing(b.name) for b in self.buffers}

        def local(name: str, subscript: str, prefix: str) -> str:
            parts = _top_level_split(subscript)
            if parts[0] != "_i" or not all(p.isdigit() for p in parts[1:]):
                raise CodegenError(f"unrolled kernel: {name}[{subscript}] is not one entry")
            return prefix + "_".join([name, *parts[1:]])

        code = [line for line in body if not line.lstrip().startswith("#")]
        taken = set(re.findall(r"[A-Za-z_]\w*", "\n".join(code)))
        wanted = {local(name, sub, "") for name in entries for sub in _subscripts(name, code)}
        prefix = "_v_" if wanted & taken else ""
        for name, pattern in entries.items():
            body = [line if line.lstrip().startswith("#") else
                    pattern.sub(lambda m, n=name: local(n, m.group(1), prefix), line)
                    for line in body]
        self.buffers.clear()
        return body


def kernel(d: Derivation, steps: list[tuple[Step, sp.Expr]], tags: dict[str, str],
           formulas: dict[str, str]) -> KernelText:
    """The body of ``_step`` for ``steps`` (each with its expression as the lowering shares it):
    the unrolled schedule where the model is small enough, else loop nests and BLAS."""
    if unrolled(d):
        text = _Kernel(d, tags, formulas, unroll=True).run(steps)
        if loop_statements(text.lines) <= UNROLL_MAX_STATEMENTS:
            return text
    return _Kernel(d, tags, formulas, unroll=False).run(steps)
