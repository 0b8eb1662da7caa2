"""The `recsys` command: one subcommand per workflow, each defined in recsys/commands/.

Every subcommand module exposes `register(subparsers)`, which adds its parser and sets
`func` to a callable taking the parsed args and returning an exit code. User mistakes
(RecsysError, bad flags) print one clear line and exit 2; nothing prints a traceback
unless --debug is given.
"""
from __future__ import annotations

import argparse
import importlib
import logging
import sys

from core.errors import RecsysError

# Order is the order `recsys --help` lists them in.
COMMAND_MODULES = (
    "recsys.commands.data",
    "recsys.commands.evaluate",
    "recsys.commands.train",
    "recsys.commands.index",
    "recsys.commands.serve",
    "recsys.commands.batch_score",
    "recsys.commands.versions",
    "recsys.commands.demo",
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="recsys",
        description="Multi-stage recommender: data, training, indexing, evaluation, serving, batch scoring.",
    )
    parser.add_argument("--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR"])
    parser.add_argument("--debug", action="store_true", help="show tracebacks for errors")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name in COMMAND_MODULES:  # command modules import heavy libraries only inside their run functions
        importlib.import_module(name).register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=args.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s",
                        stream=sys.stderr)
    try:
        return int(args.func(args) or 0)
    except RecsysError as e:
        if args.debug:
            raise
        print(f"recsys {args.command}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"recsys {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
