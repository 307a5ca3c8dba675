"""Derivation time of the MNIST network, at 10× width and with 3 hidden layers.

    python benchmarks/derive_time.py [--repeats 7]

Prints the median and min–max of `derive(spec)` (SymPy's cache cleared before every run) and
the ratio of the wide network to the narrow one: the chain rule runs on whole tensors, so width
should change nothing beyond noise.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

from sympy.core.cache import clear_cache

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from symbolic import Spec, derive  # noqa: E402


def mlp(width: int, hidden: list[int], classes: int = 10, name: str = "mlp") -> Spec:
    """A ReLU network width → hidden… → classes with softmax cross-entropy."""
    sizes = [width, *hidden, classes]
    params, model, prev = {}, {}, "x"
    for i in range(1, len(sizes)):
        params[f"W{i}"] = {"shape": [sizes[i], sizes[i - 1]], "init": "he"}
        params[f"b{i}"] = {"shape": [sizes[i]]}
        last = i == len(sizes) - 1
        value = "z" if last else f"h{i}"
        line = f"W{i} @ {prev} + b{i}"
        model[value] = line if last else f"relu({line})"
        prev = value
    return Spec.build(name=name, inputs={"x": width}, targets={"y": {"classes": classes}},
                      params=params, model=model, loss="softmax_cross_entropy(z, y)")


def timed(spec: Spec, repeats: int) -> list[float]:
    out = []
    for _ in range(repeats):
        clear_cache()
        start = time.perf_counter()
        derive(spec)
        out.append(time.perf_counter() - start)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=7)
    args = parser.parse_args()
    cases = {
        "784→128→10": mlp(784, [128]),
        "7840→1280→10 (10× width)": mlp(7840, [1280]),
        "784→128→128→128→10 (3 hidden)": mlp(784, [128, 128, 128]),
    }
    medians = {}
    print(f"{'network':34} {'median':>10} {'min–max':>20}")
    for name, spec in cases.items():
        times = timed(spec, args.repeats)
        medians[name] = statistics.median(times)
        print(f"{name:34} {medians[name] * 1e3:8.1f} ms {min(times) * 1e3:8.1f}–"
              f"{max(times) * 1e3:.1f} ms")
    narrow, wide = list(medians.values())[:2]
    print(f"wide / narrow: {wide / narrow:.2f}×   (all under 1 s: "
          f"{'yes' if max(medians.values()) < 1 else 'NO'})")


if __name__ == "__main__":
    main()
