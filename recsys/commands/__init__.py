"""One module per `recsys` subcommand (or family of them); `COMMANDS` names them for the top-level --help.

A command is one config dataclass made of sections plus a `run(config, args)`:
`add_command` adds its parser with every config flag, --config and --print-config, and a
`func` that builds the config (defaults ← file ← flags) and prints it or runs it.
Only the module of the command being run is imported, so `recsys recommend` loads no
training or serving stack.
"""
from __future__ import annotations

import argparse
from collections.abc import Callable, Mapping
from typing import Any

from core.config import add_config_flags, build_config, config_to_toml

# name → (module defining it, one-line help). Order is the order `recsys --help` lists them in.
COMMANDS: dict[str, tuple[str, str]] = {
    "data": ("recsys.commands.data", "fetch, describe and split a data source"),
    "evaluate": ("recsys.commands.evaluate", "evaluate baselines, trained models and run files on one split"),
    "train": ("recsys.commands.train", "train every stage, export, index, and promote one new version"),
    "retrain": ("recsys.commands.retrain",
                "retrain on new data, gate against the serving version, promote or keep serving"),
    "index": ("recsys.commands.index", "build the FAISS index of a trained version with other settings"),
    "serve": ("recsys.commands.serve", "serve Recommend/SimilarItems over gRPC"),
    "recommend": ("recsys.commands.recommend", "call a running server (Recommend or SimilarItems)"),
    "serve-demo": ("recsys.commands.serve", "start Redis and the server, call Recommend, show the answers"),
    "batch-score": ("recsys.commands.batch_score",
                    "precompute every user's candidates and scores with Beam (→ Redis, Parquet)"),
    "monitor": ("recsys.commands.monitor", "offline drift report (PSI / KS per feature) between two data windows"),
    "events": ("recsys.commands.events", "export the event log (LogEvents, served lists) to Parquet"),
    "experiment": ("recsys.commands.experiment", "A/B arms, shadow and canary on the live path: set, show, stop, "
                   "report"),
    "versions": ("recsys.commands.versions", "list trained artifact versions and the current one"),
    "promote": ("recsys.commands.versions", "point CURRENT at a version (verified first; atomic)"),
    "demo": ("recsys.commands.demo", "run the whole system end to end on MovieLens-100k"),
}

Run = Callable[[Any, argparse.Namespace], int]


def add_command(sub: argparse._SubParsersAction, name: str, config_class: type, run: Run, *,
                help_text: Mapping[str, Mapping[str, str]] | None = None,
                skip: Mapping[str, tuple[str, ...]] | None = None,
                build: Callable[[argparse.Namespace], Any] | None = None, **parser_kwargs: Any
                ) -> argparse.ArgumentParser:
    """Adds subcommand `name`: every field of `config_class` as a flag, --config and --print-config.

    `build(args)` makes the config (default: `build_config(config_class, args)`); `run(config, args)`
    does the work (args carries only what is not config: printing options, pass-through arguments)."""
    parser_kwargs.setdefault("help", COMMANDS[name][1] if name in COMMANDS else None)
    p = sub.add_parser(name, **parser_kwargs)
    add_config_flags(p, config_class, help_text, skip)
    p.set_defaults(config_class=config_class, func=_command(config_class, run, build))
    return p


def _command(config_class: type, run: Run, build: Callable[[argparse.Namespace], Any] | None
             ) -> Callable[[argparse.Namespace], int]:
    """args → the config (defaults ← file ← flags) → printed (--print-config) or run."""
    def func(args: argparse.Namespace) -> int:
        config = build(args) if build is not None else build_config(config_class, args)
        if args.print_config:
            print(config_to_toml(config), end="")
            return 0
        return run(config, args)
    return func
