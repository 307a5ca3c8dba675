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

    p = sub.add_parser("latex", help="write the derivation as a LaTeX document (or Markdown)",
                       description="Write SPEC's chain-rule derivation — model, computation graph, "
                                   "forward pass, every δ, the gradients, simplifications, the "
                                   "optimizer's update rule and the finite-difference check — as "
                                   "a standalone LaTeX document that pdflatex compiles.")
    p.add_argument("spec", type=Path, help="the model spec (TOML)")
    p.add_argument("-o", "--output", type=Path, required=True, metavar="FILE",
                   help="the document to write: FILE.tex (or FILE.md with --md)")
    p.add_argument("--pdf", action="store_true",
                   help="also compile it to FILE.pdf with pdflatex (must be installed)")
    p.add_argument("--md", action="store_true",
                   help="write Markdown with $$ math (GitHub, Jupyter) instead of LaTeX")
    p.add_argument("--no-check", action="store_true",
                   help="leave out the finite-difference verification table")
    p.set_defaults(func=_latex)

    p = sub.add_parser("graph", help="draw the computation graph (Graphviz)",
                       description="Draw SPEC's computation graph: forward edges, and the δ "
                                   "flowing back to every parameter. The format follows the "
                                   "suffix; .svg/.png/.pdf need Graphviz's `dot`.")
    p.add_argument("spec", type=Path, help="the model spec (TOML)")
    p.add_argument("-o", "--output", type=Path, required=True, metavar="FILE",
                   help="FILE.dot, FILE.svg, FILE.png or FILE.pdf")
    p.set_defaults(func=_graph)

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


def _latex(args: argparse.Namespace) -> int:
    from symbolic import derive, load_spec
    from symbolic.latex import write_latex, write_markdown
    from symbolic.verify import verify_reference

    d = derive(load_spec(args.spec))
    report = None if args.no_check else verify_reference(d)
    if args.md:
        paths = write_markdown(d, args.output, report=report)
    else:
        paths = write_latex(d, args.output, pdf=args.pdf, report=report)
    for path in paths:
        print(f"wrote {path}")
    return 0


def _graph(args: argparse.Namespace) -> int:
    from symbolic import derive, load_spec
    from symbolic.graph import write_graph

    path = write_graph(derive(load_spec(args.spec)), args.output)
    print(f"wrote {path}")
    return 0


def _generate(args: argparse.Namespace) -> int:
    import sys

    from codegen import VerificationError, generate
    from symbolic import derive, load_spec

    d = derive(load_spec(args.spec))
    try:
        path = generate(d, args.out)
    except VerificationError as exc:
        print(exc.report.table())
        print(f"symgrad: error: {exc}", file=sys.stderr)
        return 1
    print(f"wrote {path} (gradients verified; report {path.with_suffix('.check.json')})")
    return 0
