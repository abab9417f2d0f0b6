"""Command line: ``python -m jaxadv [demo | evaluate ...]`` (also installed as ``jaxadv``)."""

from __future__ import annotations

import argparse
from collections.abc import Sequence

from jaxadv.cli import add_evaluate_parser

#: What ``jaxadv --help`` prints above the commands (plain text: the terminal shows it as it is).
_DESCRIPTION = (
    "Adversarial examples for JAX models. 'jaxadv demo' (the default) attacks a CNN trained on the "
    "bundled digits set; 'jaxadv evaluate' measures the robust accuracy of a saved Flax model. "
    "'jaxadv COMMAND --help' describes each command."
)


def build_parser() -> argparse.ArgumentParser:
    """The ``jaxadv`` argument parser (subcommands ``demo`` and ``evaluate``)."""
    parser = argparse.ArgumentParser(prog="jaxadv", description=_DESCRIPTION)
    sub = parser.add_subparsers(dest="command")
    demo = sub.add_parser("demo", help="attack a CNN trained on the bundled digits set (default)")
    demo.add_argument(
        "--eps", type=float, nargs="+", default=[0.05, 0.1, 0.2], help="L-inf radii, one table column each"
    )
    demo.add_argument("--steps", type=int, default=20, help="iterations of the iterative attacks")
    demo.add_argument(
        "--seed",
        type=int,
        default=0,
        help="seed of the data split, the training and the attacks (default: 0)",
    )
    demo.add_argument("--out", default="jaxadv-demo", help="folder for the figures and results.json")
    demo.add_argument("--queries", type=int, default=500, help="query budget of the black-box attacks")
    add_evaluate_parser(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit status (2: a problem with the arguments or inputs)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command in (None, "demo"):
        from jaxadv import demo as demo_module

        eps = getattr(args, "eps", [0.05, 0.1, 0.2])
        demo_module.run(
            eps,
            steps=getattr(args, "steps", 20),
            seed=getattr(args, "seed", 0),
            queries=getattr(args, "queries", 500),
            out=getattr(args, "out", demo_module.DEFAULT_OUT),
        )
        return 0
    if args.command == "evaluate":
        from jaxadv.cli import run_evaluate

        return run_evaluate(args)
    parser.error(f"unknown command {args.command!r}")  # pragma: no cover
    return 2


if __name__ == "__main__":
    raise SystemExit(main())
