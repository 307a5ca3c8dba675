"""The ``symgrad`` command: thin wrappers that parse arguments, call one library function, print.

Results go to stdout; progress goes to stderr. Every expected failure (a bad spec, bad data, an
unwritable output, a gradient that fails its check) is one line on stderr and a non-zero exit;
``--debug`` shows the traceback instead.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

EXIT_ERROR = 2
EXIT_CHECK_FAILED = 1


def _spec_arg(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("spec", type=Path, help="the model spec (a TOML file, see the README)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="symgrad",
        description="Turn a model written as math into its chain-rule gradients (SymPy), a "
                    "LaTeX derivation, and a verified standalone Numba training module.",
        epilog="Start with `symgrad demo`; `symgrad COMMAND --help` explains each command.")
    parser.add_argument("--debug", action="store_true",
                        help="show Python tracebacks instead of one-line errors")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("derive", help="print the forward pass, every δ and every gradient",
                       description="Derive the gradients of SPEC by the chain rule and print "
                                   "them as formulas.")
    _spec_arg(p)
    p.add_argument("--expanded", action="store_true",
                   help="also print each gradient with every δ substituted (one formula each)")
    p.set_defaults(func=_derive)

    p = sub.add_parser("check", help="prove the gradients against finite differences",
                       description="Generate SPEC's module into a temporary folder, import it and "
                                   "compare its gradients with central finite differences in "
                                   "float64 (VERIFICATION.md). Exit 1 if any tensor fails.")
    _spec_arg(p)
    p.add_argument("--reference", action="store_true",
                   help="check the reference evaluator (the SymPy derivation) instead of the "
                        "generated module")
    p.add_argument("--seed", type=int, default=0, help="seed of the check points (default 0)")
    p.add_argument("--json", type=Path, metavar="FILE", help="also write the report as JSON")
    p.set_defaults(func=_check)

    from .commands import add_commands

    add_commands(sub)
    return parser


def _derive(args: argparse.Namespace) -> int:
    from symbolic import derive, load_spec
    from symbolic.pretty import describe

    print(describe(derive(load_spec(args.spec)), expanded=args.expanded), end="")
    return 0


def _check(args: argparse.Namespace) -> int:
    import json

    from symbolic import derive, load_spec
    from symbolic.verify import verify_reference

    from .fileio import atomic_write_text

    d = derive(load_spec(args.spec))
    if args.reference:
        report = verify_reference(d, seed=args.seed)
        what = "reference evaluator"
    else:
        from codegen import check

        report = check(d, seed=args.seed)
        what = "generated module"
    print(f"gradient check of {d.spec.name} ({what}, float64):")
    print(report.table())
    if args.json:
        atomic_write_text(args.json, json.dumps(report.to_dict(), indent=2, sort_keys=True) + "\n")
    if not report.ok:
        for line in report.failures():
            print(line, file=sys.stderr)
        return EXIT_CHECK_FAILED
    return 0


def main(argv: list[str] | None = None) -> int:
    from .errors import show_warnings

    parser = build_parser()
    args = parser.parse_args(argv)
    show_warnings()
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        print("symgrad: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:  # noqa: BLE001 - every failure becomes one line unless --debug
        if args.debug:
            raise
        from .errors import describe_error

        message, code = describe_error(exc)
        print(f"symgrad: error: {message}", file=sys.stderr)
        return code


if __name__ == "__main__":
    sys.exit(main())
