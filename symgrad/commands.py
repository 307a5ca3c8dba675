"""The commands that write files: generate, latex, graph, train, demo."""

from __future__ import annotations

import argparse
from pathlib import Path


def add_commands(sub: argparse._SubParsersAction) -> None:
    from .runs import add_demo_arguments, add_train_arguments, demo_command, train_command

    p = sub.add_parser("generate", help="write the verified Numba training module",
                       description="Derive SPEC, render generated/<name>.py, import it and check "
                                   "its gradients against finite differences; the module is only "
                                   "written when the check passes (report beside it, "
                                   "<name>.check.json).")
    p.add_argument("spec", type=Path, help="the model spec (TOML)")
    p.add_argument("-o", "--out", type=Path, default=Path("generated"), metavar="DIR",
                   help="output folder (default: generated)")
    p.set_defaults(func=_generate)

    p = sub.add_parser("train", help="train a model on data, with progress, plots, checkpoints",
                       description="Derive, generate and check SPEC's module (reusing a current "
                                   "one), then train it on --data and evaluate it.")
    add_train_arguments(p)
    p.set_defaults(func=train_command)

    p = sub.add_parser("demo", help="the whole pipeline on the bundled digits data (< 1 min)",
                       description="Derive the 64→128→10 digits network, write its LaTeX "
                                   "derivation, generate and verify its module, train it with "
                                   "Adam and report the test accuracy. No network needed.")
    add_demo_arguments(p)
    p.set_defaults(func=demo_command)


def _generate(args: argparse.Namespace) -> int:
    from codegen import generate
    from symbolic import derive, load_spec

    d = derive(load_spec(args.spec))
    path = generate(d, args.out)
    print(f"wrote {path} (gradients verified; report {path.with_suffix('.check.json')})")
    return 0
