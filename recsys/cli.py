"""The `recsys` command: one subcommand per workflow, each defined in recsys/commands/.

Only the module of the command being run is imported (the others appear in `recsys --help`
by name), so a thin client such as `recsys recommend` loads neither TensorFlow nor the
serving stack. A command's config is built from defaults, its --config file and the flags
given, then printed (--print-config) or run (recsys.commands.add_command). User mistakes (RecsysError, bad flags,
bad config values) print one line `recsys <cmd>: error: ...` and exit 2; nothing prints a
traceback unless --debug is given.
"""
from __future__ import annotations

import argparse
import importlib
import logging
import sys

from core.config import ConfigError, flag_message
from core.errors import RecsysError
from recsys.commands import COMMANDS

_GLOBAL_WITH_VALUE = ("--log-level",)


def _command_of(argv: list[str]) -> str | None:
    """The subcommand named in `argv`; "" when there is none (e.g. `recsys --help`), None when unsure."""
    skip = False
    for token in argv:
        if skip:
            skip = False
        elif token in _GLOBAL_WITH_VALUE:
            skip = True
        elif token.startswith("-"):
            continue
        else:
            return token if token in COMMANDS else None
    return ""


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """The `recsys` parser. `command` None: every subcommand complete; a name: that one complete and the
    others by name only; "": all by name only (enough for `recsys --help`)."""
    parser = argparse.ArgumentParser(
        prog="recsys",
        description="Multi-stage recommender: data, training, indexing, evaluation, serving, batch scoring. "
                    "Every command takes --config FILE.toml (flags override it) and --print-config.",
    )
    parser.add_argument("--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR"])
    parser.add_argument("--debug", action="store_true", help="show tracebacks for errors")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    full = ({module for module, _ in COMMANDS.values()} if command is None
            else {COMMANDS[command][0]} if command else set())
    for module in dict.fromkeys(m for m, _ in COMMANDS.values()):
        if module in full:  # command modules import heavy libraries only inside their run functions
            importlib.import_module(module).register(sub)
    registered = set(sub.choices)
    for name, (_, help_text) in COMMANDS.items():
        if name not in registered:
            sub.add_parser(name, help=help_text)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    parser = build_parser(_command_of(argv))
    args = parser.parse_args(argv)
    logging.basicConfig(level=args.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s",
                        stream=sys.stderr)
    try:
        return int(args.func(args) or 0)
    except RecsysError as e:
        if args.debug:
            raise
        message = flag_message(args.config_class, e) if isinstance(e, ConfigError) and hasattr(
            args, "config_class") else str(e)
        print(f"recsys {args.command}: error: {message}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"recsys {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
