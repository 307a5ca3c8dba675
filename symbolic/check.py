"""Central finite-difference gradient check, the protocol of VERIFICATION.md.

Model-agnostic and pure numpy + stdlib: it checks any pair ``loss(params)`` /
``loss_and_grad(params)`` -- the reference evaluator and generated modules alike -- and it
only ever evaluates in float64.

Every parameter tensor is checked separately (all entries up to ``max_full``, else
``n_random_entries`` random ones plus the first and last) and along random unit directions
of the joint parameter vector. Each comparison is judged by
``|a - n| <= atol + rtol * max(|a|, |n|)`` with ``atol = atol_scale * max(1, |L|)``; a failure
is re-measured at ``h/4`` and ``4h`` to tell a wrong gradient (the discrepancy stays put) from
a numerically inconclusive one (it moves like ``h**2`` or ``1/h``).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from functools import partial
from typing import Any

import numpy as np

Params = dict[str, np.ndarray]
LossFn = Callable[[Params], float]
LossAndGradFn = Callable[[Params], tuple[float, Params]]
KinkMaskFn = Callable[[Params], np.ndarray]

EPS = float(np.finfo(np.float64).eps)
STEP_SCALE = EPS ** (1.0 / 3.0)  # optimal central-difference step for unit-scale values
TINY = 1e-10  # |a|, |n| both below TINY * max(1, |L|): too small to judge (CS231n)
MOVES = 0.25  # a discrepancy that changes by more than this fraction at h/4 or 4h "moves"
FEW_KINKS = 3  # more kink-crossed pairs than this at one point: resample the point
INIT_STD = 0.5  # random points: N(0, 0.5**2) / sqrt(fan_in)

OK = "ok"
WRONG = "wrong"
INCONCLUSIVE = "inconclusive"
TOO_SMALL = "too small to judge"
KINK = "kink-crossed"

# A tensor takes the first status present among its comparisons (ok beats a few exact zeros);
# the report takes the first present among its rows (a tensor that is all zeros is not ok).
_ROW_ORDER = (WRONG, INCONCLUSIVE, OK, TOO_SMALL)
_REPORT_ORDER = (WRONG, INCONCLUSIVE, TOO_SMALL, OK)
_WORST_RANK = {OK: 0, TOO_SMALL: 0, INCONCLUSIVE: 1, WRONG: 2}


# --------------------------------------------------------------------------- results


@dataclass(frozen=True)
class Comparison:
    """One analytic-vs-numeric comparison: a tensor entry, or a direction ``(k,)``."""

    point: int
    target: str  # tensor name, or "direction"
    index: tuple[int, ...]
    analytic: float
    numeric: float  # nan when kink-crossed
    h: float
    err: float
    tol: float
    status: str
    rechecks: tuple[tuple[float, float, float], ...] = ()  # (h, analytic, numeric) at h/4, 4h
    hint: str = ""

    @property
    def label(self) -> str:
        if self.target == "direction":
            return f"direction {self.index[0]}"
        return f"{self.target}[{', '.join(map(str, self.index))}]"

    @property
    def ratio(self) -> float:
        """err / tol; inf when either is not finite."""
        r = self.err / self.tol
        return r if math.isfinite(r) else math.inf

    def describe(self) -> str:
        """One line: where, analytic, numeric, the criterion and any hint."""
        text = (
            f"{self.label} at point {self.point}: analytic {self.analytic:.12g}, "
            f"numeric {self.numeric:.12g} (h={self.h:.3g}), |a-n| {self.err:.3g} vs tol "
            f"{self.tol:.3g}"
        )
        if self.rechecks:
            text += "; numeric at " + ", ".join(f"h={h:.3g}: {n:.12g}" for h, _, n in self.rechecks)
        return f"{text}; {self.hint}" if self.hint else text


@dataclass(frozen=True)
class TensorResult:
    """The report row of one parameter tensor (or of all random directions)."""

    name: str
    shape: tuple[int, ...]
    checked: int  # comparisons made, over all points
    skipped_kinks: int  # finite-difference pairs that crossed a kink
    counts: dict[str, int]  # comparisons per status
    max_abs_err: float  # over judged comparisons (not "too small")
    max_rel_err: float  # CS231n |a-n| / max(|a|, |n|)
    margin: float  # max err / tol
    worst: Comparison | None  # a comparison of the worst status, largest err/tol first

    @property
    def status(self) -> str:
        for status in _ROW_ORDER:
            if self.counts.get(status):
                return status
        return INCONCLUSIVE  # nothing compared, e.g. every pair crossed a kink

    def failure(self) -> str | None:
        """One line naming the tensor, the worst index, analytic and numeric; None if ok."""
        if self.status == OK:
            return None
        if self.worst is None:
            return (f"{self.name}: {self.status}: nothing compared "
                    f"({self.skipped_kinks} pairs crossed a kink)")
        bad = self.counts.get(self.status, 0)
        return (
            f"{self.name}: {self.status} at {bad} of {self.checked} compared; worst "
            f"{self.worst.describe()}"
        )


@dataclass(frozen=True)
class CheckReport:
    """Result of :func:`check_gradients`; ``ok`` only when every row and direction is ok."""

    rows: list[TensorResult]
    directions: list[Comparison]
    loss_mismatches: list[str]  # points where loss() and loss_and_grad() disagree (or, from
    #                             symbolic.verify, the loss and the reference evaluator's)
    kinks_per_point: list[int]  # kink-crossed pairs at each point; > FEW_KINKS: resample it
    points: int
    seed: int
    rtol: float
    atol_scale: float
    notes: list[str] = field(default_factory=list)

    @property
    def direction_row(self) -> TensorResult:
        return _summarise("directions", (len(self.directions),), self.directions)

    @property
    def status(self) -> str:
        if self.loss_mismatches:
            return WRONG
        present = {row.status for row in [*self.rows, self.direction_row]}
        return next(s for s in _REPORT_ORDER if s in present)

    @property
    def ok(self) -> bool:
        return self.status == OK

    @property
    def margin(self) -> float:
        """The largest err/tol over every tensor and direction."""
        return max(row.margin for row in [*self.rows, self.direction_row])

    def row(self, name: str) -> TensorResult:
        return next(r for r in self.rows if r.name == name)

    def failures(self) -> list[str]:
        """One line per tensor (or the directions) that is not ok, and per loss mismatch."""
        lines = [r.failure() for r in [*self.rows, self.direction_row]]
        return self.loss_mismatches + [line for line in lines if line]

    def table(self) -> str:
        """Fixed-width text table for a terminal."""
        head = ("tensor", "shape", "checked", "kinks", "max abs err", "max rel err", "margin",
                "status")
        body = [
            (r.name, str(r.shape), str(r.checked), str(r.skipped_kinks), f"{r.max_abs_err:.2e}",
             f"{r.max_rel_err:.2e}", f"{r.margin:.3g}", r.status)
            for r in [*self.rows, self.direction_row]
        ]
        widths = [max(len(line[i]) for line in [head, *body]) for i in range(len(head))]
        lines = ["  ".join(c.ljust(w) for c, w in zip(line, widths)).rstrip()
                 for line in [head, *body]]
        lines.append(
            f"overall: {self.status} ({self.points} points, seed {self.seed}, rtol {self.rtol:g}, "
            f"atol {self.atol_scale:g}*max(1,|L|))"
        )
        lines += [f"note: {n}" for n in self.notes]
        lines += [f"FAIL: {f}" for f in self.failures()]
        return "\n".join(lines)

    def to_dict(self) -> dict[str, Any]:
        """JSON-able summary; non-finite floats become strings."""
        rows = [{**asdict(r), "status": r.status} for r in self.rows]
        data: dict[str, Any] = _jsonable({
            "status": self.status,
            "ok": self.ok,
            "margin": self.margin,
            "points": self.points,
            "seed": self.seed,
            "rtol": self.rtol,
            "atol_scale": self.atol_scale,
            "rows": rows,
            "directions": [asdict(d) for d in self.directions],
            "loss_mismatches": self.loss_mismatches,
            "kinks_per_point": self.kinks_per_point,
            "notes": self.notes,
            "failures": self.failures(),
        })
        return data


def _jsonable(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, (float, np.floating)):
        return float(value) if math.isfinite(value) else str(float(value))
    if isinstance(value, np.integer):
        return int(value)
    return value


def _summarise(name: str, shape: tuple[int, ...], comps: Sequence[Comparison]) -> TensorResult:
    judged = [c for c in comps if c.status not in (KINK, TOO_SMALL)]
    compared = [c for c in comps if c.status != KINK]
    counts: dict[str, int] = {}
    for c in compared:
        counts[c.status] = counts.get(c.status, 0) + 1
    worst = max(compared, key=lambda c: (_WORST_RANK[c.status], c.ratio), default=None)
    return TensorResult(
        name=name,
        shape=shape,
        checked=len(compared),
        skipped_kinks=len(comps) - len(compared),
        counts=counts,
        max_abs_err=max((_finite_or_inf(c.err) for c in judged), default=0.0),
        max_rel_err=max((_rel_err(c.analytic, c.numeric) for c in judged), default=0.0),
        margin=max((c.ratio for c in compared), default=0.0),
        worst=worst,
    )


def _finite_or_inf(x: float) -> float:
    return x if math.isfinite(x) else math.inf


def _rel_err(a: float, n: float) -> float:
    """CS231n relative error |a-n| / max(|a|, |n|)."""
    return _finite_or_inf(abs(a - n) / max(abs(a), abs(n), np.finfo(np.float64).tiny))


# --------------------------------------------------------------------------- helpers


def fd_step(x: float) -> float:
    """Power-of-two central-difference step for a coordinate of value ``x``."""
    return 2.0 ** round(math.log2(STEP_SCALE * max(1.0, abs(x))))


def near_kink(values: np.ndarray, rel: float = 1e-3, *, axis: int | None = None) -> bool:
    """True if any kink argument lies within ``rel`` of its kink at 0.

    ``values`` is the argument minus its kink location (``z`` for relu, ``x - lo`` for a
    clip), evaluated over the batch. Distances are relative to the argument's typical
    magnitude, its RMS over ``axis`` (None: the whole array; 0: per unit over the batch).
    """
    v = np.asarray(values, dtype=np.float64)
    if v.size == 0:
        return False
    scale = np.sqrt(np.mean(v * v, axis=axis, keepdims=True))
    return bool(np.any(np.abs(v) <= rel * scale))


def random_point(
    shapes: Mapping[str, tuple[int, ...]], seed: int, fan_in: Mapping[str, int] | None = None
) -> Params:
    """Draw every tensor from N(0, 0.5**2) / sqrt(fan_in), in float64.

    ``fan_in`` defaults per tensor to ``prod(shape[1:])`` for 2-D and larger tensors
    (weights are stored (out, in)) and to 1 for vectors and scalars.
    """
    rng = np.random.default_rng(seed)
    point = {}
    for name, shape in shapes.items():
        fan = (fan_in or {}).get(name, math.prod(shape[1:]) if len(shape) >= 2 else 1)
        draw = rng.normal(0.0, INIT_STD, size=shape) / math.sqrt(max(fan, 1))
        point[name] = np.asarray(draw, dtype=np.float64)
    return point


def replace_zero_tensors(
    params: Mapping[str, np.ndarray], seed: int, fan_in: Mapping[str, int] | None = None
) -> Params:
    """Copy of ``params`` with every all-zero tensor replaced by a :func:`random_point` draw.

    At all-zero weights softmax is uniform and many gradient bugs are invisible.
    """
    point = _as_float64(params, "params")
    zero = {name: v.shape for name, v in point.items() if not v.any()}
    return {**point, **random_point(zero, seed, fan_in)}


# --------------------------------------------------------------------------- float64 guards


def _as_float64(params: Mapping[str, Any], where: str) -> Params:
    out = {}
    for name, value in params.items():
        arr = np.asarray(value)
        if np.iscomplexobj(arr) or arr.dtype.kind not in "biuf":
            raise TypeError(f"{where}: parameter {name!r} has dtype {arr.dtype}; need real numbers")
        arr = arr.astype(np.float64)  # a copy: callers' arrays are never touched
        if not np.all(np.isfinite(arr)):
            raise ValueError(f"{where}: parameter {name!r} has non-finite values")
        assert arr.dtype == np.float64
        out[name] = arr
    return out


def _loss64(value: Any, where: str) -> float:
    """The loss as a Python float; anything but float64 is refused."""
    if isinstance(value, np.ndarray) and value.dtype == np.float64 and value.size == 1:
        return float(value.reshape(()))
    if isinstance(value, float):  # includes np.float64
        return value
    kind = getattr(value, "dtype", type(value).__name__)
    raise TypeError(f"{where}: the loss is {kind}, not float64; finite differences run in "
                    "float64 only -- call the float64 specialization")


def _grads64(grads: Mapping[str, Any], theta: Params, where: str) -> Params:
    if set(grads) != set(theta):
        missing, extra = sorted(set(theta) - set(grads)), sorted(set(grads) - set(theta))
        raise ValueError(f"{where}: gradient names differ from parameters "
                         f"(missing {missing}, unexpected {extra})")
    out = {}
    for name, g in grads.items():
        arr = np.asarray(g)
        if arr.dtype != np.float64:
            raise TypeError(f"{where}: gradient of {name!r} is {arr.dtype}, not float64; "
                            "finite differences run in float64 only")
        if arr.shape != theta[name].shape:
            raise ValueError(f"{where}: gradient of {name!r} has shape {arr.shape}, "
                             f"parameter has {theta[name].shape}")
        out[name] = arr
    return out


# --------------------------------------------------------------------------- the check


@dataclass(frozen=True)
class _Probe:
    """A central-difference pair and the analytic value it is compared with."""

    plus: Params
    minus: Params
    denom: float  # the step actually applied
    analytic: float


def agree(a: float, b: float, rtol: float, atol: float) -> bool:
    """``|a − b| <= atol + rtol·max(|a|, |b|)``, the check's tolerance (NaN never agrees)."""
    return abs(a - b) <= atol + rtol * max(abs(a), abs(b))


class _PointCheck:
    """All comparisons at one parameter point."""

    def __init__(self, index: int, theta: Params, loss: LossFn, loss_and_grad: LossAndGradFn,
                 kink_masks: KinkMaskFn | None, rtol: float, atol_scale: float) -> None:
        self.index, self.theta, self.loss = index, theta, loss
        self.kink_masks, self.rtol = kink_masks, rtol
        where = f"point {index}"
        value, grads = loss_and_grad(_copy(theta))
        self.value = _loss64(value, f"{where}: loss_and_grad")
        if not math.isfinite(self.value):
            raise ValueError(f"{where}: the loss is {self.value}; choose another point")
        self.grads = _grads64(grads, theta, f"{where}: loss_and_grad")
        self.scale = max(1.0, abs(self.value))
        self.atol = atol_scale * self.scale
        self.base = None if kink_masks is None else np.asarray(kink_masks(_copy(theta)))
        plain = self._loss(theta)
        self.mismatch = None
        if not agree(plain, self.value, rtol, self.atol):
            self.mismatch = (f"{where}: loss() = {plain:.17g} but loss_and_grad() = "
                             f"{self.value:.17g}; the gradient belongs to a different loss")

    def _loss(self, params: Params) -> float:
        return _loss64(self.loss(_copy(params)), f"point {self.index}: loss")

    def _crossed(self, params: Params) -> bool:
        if self.kink_masks is None or self.base is None:
            return False
        return not np.array_equal(np.asarray(self.kink_masks(_copy(params))), self.base)

    def _measure(self, probe: _Probe) -> tuple[float, float] | None:
        """(analytic, numeric), or None when the pair crosses a kink."""
        if self._crossed(probe.plus) or self._crossed(probe.minus):
            return None
        return probe.analytic, (self._loss(probe.plus) - self._loss(probe.minus)) / probe.denom

    def entry_probe(self, name: str, flat: int, h: float) -> _Probe:
        plus, minus = _copy(self.theta), _copy(self.theta)
        x = self.theta[name].flat[flat]
        plus[name].flat[flat] = x + h
        minus[name].flat[flat] = x - h
        denom = float(plus[name].flat[flat] - minus[name].flat[flat])
        return _Probe(plus, minus, denom, float(self.grads[name].flat[flat]))

    def direction_probe(self, u: Params, h: float) -> _Probe:
        plus = {k: v + h * u[k] for k, v in self.theta.items()}
        minus = {k: v - h * u[k] for k, v in self.theta.items()}
        # g . (actual step) / 2h: the analytic side sees the same rounding as the numeric one
        applied = sum(float(np.sum(self.grads[k] * (plus[k] - minus[k]))) for k in plus)
        return _Probe(plus, minus, 2.0 * h, applied / (2.0 * h))

    def compare(self, target: str, index: tuple[int, ...], make: Callable[[float], _Probe],
                h: float) -> Comparison:
        """Judge one comparison; re-measure a failure at h/4 and 4h."""
        probe = make(h)
        got = self._measure(probe)
        if got is None:
            return Comparison(self.index, target, index, probe.analytic, math.nan, h, math.nan,
                              math.nan, KINK)
        a, n = got
        err, tol = abs(a - n), self.atol + self.rtol * max(abs(a), abs(n))
        status, hint = self._judge(a, n, err, tol)
        rechecks: list[tuple[float, float, float]] = []
        if status is None:
            for s in (0.25, 4.0):
                again = self._measure(make(h * s))
                if again is not None:
                    rechecks.append((h * s, *again))
            status, hint = _diagnose(h, n - a, [(h2, n2 - a2) for h2, a2, n2 in rechecks])
        return Comparison(self.index, target, index, a, n, h, err, tol, status, tuple(rechecks),
                          hint)

    def _judge(self, a: float, n: float, err: float, tol: float) -> tuple[str | None, str]:
        if not math.isfinite(a):
            return WRONG, "the analytic gradient is not finite"
        if not math.isfinite(n):
            return INCONCLUSIVE, "the loss is not finite at theta +- h; choose another point"
        if max(abs(a), abs(n)) < TINY * self.scale:
            return TOO_SMALL, ""
        if err <= tol:
            return OK, ""
        return None, ""


def _diagnose(h: float, d0: float, others: list[tuple[float, float]]) -> tuple[str, str]:
    """Wrong if the discrepancy ``d0`` at ``h`` stays put at the other steps, else inconclusive."""
    if not others:
        return INCONCLUSIVE, "the h/4 and 4h pairs cross a kink; choose another point"
    if all(abs(d - d0) <= MOVES * abs(d0) for _, d in others):
        return WRONG, "gradient wrong: the discrepancy does not change with h"
    if all((h2 < h) == (abs(d) < abs(d0)) for h2, d in others):
        return INCONCLUSIVE, ("numerically inconclusive: the discrepancy shrinks with h (~h^2, "
                              "truncation); rescale the parameters or inputs, or choose a point "
                              "where the loss curves less")
    if all((h2 < h) == (abs(d) > abs(d0)) for h2, d in others):
        return INCONCLUSIVE, ("numerically inconclusive: the discrepancy grows as h shrinks (~1/h, "
                              "round-off); rescale the loss or choose another point")
    return INCONCLUSIVE, "numerically inconclusive: the discrepancy moves irregularly with h"


def _copy(params: Params) -> Params:
    return {k: v.copy() for k, v in params.items()}


def _entries(size: int, rng: np.random.Generator, max_full: int, n_random: int) -> np.ndarray:
    """All flat indices up to ``max_full``, else ``n_random`` random ones plus first and last."""
    if size <= max_full:
        return np.arange(size)
    inner = rng.choice(size - 2, size=min(n_random, size - 2), replace=False) + 1
    return np.unique(np.concatenate([[0], inner, [size - 1]]))


def check_gradients(
    loss: LossFn,
    loss_and_grad: LossAndGradFn,
    points: Sequence[Mapping[str, Any]],
    *,
    kink_masks: KinkMaskFn | None = None,
    seed: int = 0,
    rtol: float = 1e-6,
    atol_scale: float = 1e-8,
    max_full: int = 512,
    n_random_entries: int = 32,
    n_directions: int = 3,
) -> CheckReport:
    """Compare ``loss_and_grad``'s gradient with central differences of ``loss`` at ``points``.

    ``loss`` and ``loss_and_grad`` take a dict of float64 arrays (a fresh copy each call) and
    must return float64. ``kink_masks(params)`` returns the branch labels of every kink
    argument (e.g. relu's ``z > 0``, concatenated); a pair whose labels differ from those at
    the point is kink-crossed, skipped and counted. ``seed`` fixes the random entries and
    directions.
    """
    if not points:
        raise ValueError("check_gradients needs at least one parameter point")
    thetas = [_as_float64(p, f"point {i}") for i, p in enumerate(points)]
    shapes = {name: v.shape for name, v in thetas[0].items()}
    for i, theta in enumerate(thetas[1:], start=1):
        if {name: v.shape for name, v in theta.items()} != shapes:
            raise ValueError(f"point {i}: tensors or shapes differ from point 0 ({shapes})")

    per_tensor: dict[str, list[Comparison]] = {name: [] for name in shapes}
    directions: list[Comparison] = []
    mismatches: list[str] = []
    kinks: list[int] = []
    notes: list[str] = []
    if kink_masks is None:
        notes.append("kink detection off (no kink_masks given)")
    for p, theta in enumerate(thetas):
        at = _PointCheck(p, theta, loss, loss_and_grad, kink_masks, rtol, atol_scale)
        if at.mismatch:
            mismatches.append(at.mismatch)
        rng = np.random.default_rng([seed, p])
        found: list[Comparison] = []
        for name, shape in shapes.items():
            for flat in _entries(theta[name].size, rng, max_full, n_random_entries):
                index = tuple(int(i) for i in np.unravel_index(int(flat), shape))
                make = partial(at.entry_probe, name, int(flat))
                found.append(at.compare(name, index, make, fd_step(theta[name].flat[flat])))
        norm_inf = max((float(np.max(np.abs(v))) for v in theta.values() if v.size), default=0.0)
        for k in range(n_directions):
            u = _unit_direction(shapes, rng)
            found.append(at.compare("direction", (k,), partial(at.direction_probe, u),
                                    STEP_SCALE * max(1.0, norm_inf)))
        for c in found:
            (directions if c.target == "direction" else per_tensor[c.target]).append(c)
        crossed = sum(c.status == KINK for c in found)
        kinks.append(crossed)
        if crossed:
            notes.append(f"point {p}: {crossed} finite-difference pairs crossed a kink and were "
                         "skipped" + ("; more than a few: resample this point (see near_kink)"
                                      if crossed > FEW_KINKS else ""))

    rows = [_summarise(name, shapes[name], per_tensor[name]) for name in shapes]
    notes += [f"{r.name}: every compared value is below {TINY:g}*max(1,|L|); rescale the loss or "
              "choose another point to judge it" for r in rows if r.status == TOO_SMALL]
    return CheckReport(rows, directions, mismatches, kinks, len(thetas), seed, rtol, atol_scale,
                       notes)


def _unit_direction(shapes: Mapping[str, tuple[int, ...]], rng: np.random.Generator) -> Params:
    """A random unit-norm direction over the joint parameter vector, split per tensor."""
    sizes = [math.prod(s) for s in shapes.values()]
    u = rng.standard_normal(sum(sizes))
    u /= np.linalg.norm(u)
    parts = np.split(u, np.cumsum(sizes)[:-1])
    return {name: part.reshape(shape) for (name, shape), part in zip(shapes.items(), parts)}
