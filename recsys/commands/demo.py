"""`recsys demo`: the main job end to end on MovieLens-100k, one real command after another.

Each step is printed as the `recsys …` command a user would type, then run in-process
through the same entry point, so the demo is also the CLI's tour. Data flags (e.g.
`--source synthetic --synthetic-num-users 300`) are passed on to every step that reads data.
"""
from __future__ import annotations

import argparse
import dataclasses
import pathlib
import shlex
import time
from collections.abc import Sequence

from core.config import flag_of, leaf_values, section
from core.errors import RecsysError
from recsys.commands import add_command
from recsys.commands._data import DATA_HELP
from workflows.data import DataConfig


@dataclasses.dataclass(frozen=True)
class DemoRunConfig:
    """Where the demo writes and how long it trains."""

    workdir: str = "demo-run"  # artifacts, reports and batch scores go here
    quick: bool = False        # at most 2 epochs per model: a smoke run of every step, not the measured numbers


@dataclasses.dataclass(frozen=True)
class DemoConfig:
    """`recsys demo`: the run settings and the data every data-reading step gets."""

    demo: DemoRunConfig = section(DemoRunConfig, title="demo")
    data: DataConfig = section(DataConfig)


def register(sub: argparse._SubParsersAction) -> None:
    add_command(sub, "demo", DemoConfig, run,
                help_text={"demo": {"workdir": "where artifacts and reports go",
                                    "quick": "at most 2 epochs per model: a smoke run of every step, not the "
                                             "measured numbers"},
                           **{f"data.{k}": v for k, v in DATA_HELP.items()}},
                description="Fetches MovieLens-100k, trains the two-tower retriever (TFRS), exports it and builds "
                            "the FAISS index, trains the two-head ranker, precomputes every user's candidates "
                            "with Beam, evaluates baselines, retrieval, the full pipeline and the batch output "
                            "on one split (with a blend-weight sweep), then serves over gRPC with Redis and "
                            "calls Recommend. Data flags (the ones `recsys data` takes) go to every step that "
                            "reads data, e.g. `recsys demo --quick --source synthetic --synthetic-num-users "
                            "300 --synthetic-num-items 150 --synthetic-num-interactions 6000` for a small run.")


def demo_steps(work: pathlib.Path, quick: bool = False,
               data_args: Sequence[str] = ()) -> list[tuple[str, list[str]]]:
    """The demo as (title, `recsys` argv) pairs: what a user would type, in order.

    `data_args` (flags of `recsys data`, e.g. `--source synthetic ...`) go to the steps that read
    data: data, train and evaluate; the others read the trained version. None: MovieLens-100k.
    """
    artifacts, reports, batch = work / "artifacts", work / "reports", work / "batch"
    data = list(data_args)
    train = ["train", *data, "--artifacts", str(artifacts)] + (["--epochs", "2"] if quick else [])
    evaluate = ["evaluate", *data, "--models", "random", "popularity", "ease", "ease_recency", "itemknn", "two_tower",
                "pipeline",
                "--artifacts", str(artifacts), "--batch-output", str(batch), "--sweep-blend", "0:1:6",
                "--report-dir", str(reports / "evaluation")]
    return [
        ("Fetch MovieLens-100k and show the per-user temporal split" if not data else
         "Load the data and show its split", ["data", *data]),
        ("Train the two-tower retriever and the two-head ranker, export them, build the FAISS index, "
         "promote the new version", train),
        ("Precompute every user's candidates and both head scores with Beam (DirectRunner) into Parquet",
         ["batch-score", "--artifacts", str(artifacts), "--output", str(batch)]),
        ("Evaluate baselines, retrieval only, the full pipeline and the Beam output on the same split "
         "(full-catalogue ranking, train items excluded), and sweep the blend weights", evaluate),
        ("List the trained versions", ["versions", "--artifacts", str(artifacts)]),
        ("Serve over gRPC with Redis and call Recommend", ["serve-demo", "--artifacts", str(artifacts)]),
    ]


def data_flags(cfg: DataConfig) -> list[str]:
    """The data flags that give `cfg` back (every command reading data spells them alike): only the
    fields that differ from their defaults."""
    flags: list[str] = []
    defaults = leaf_values(DemoConfig())
    for dotted, value in leaf_values(DemoConfig(data=cfg)).items():
        if not dotted.startswith("data.") or value == defaults[dotted]:
            continue
        flag = flag_of(DemoConfig, dotted)
        if isinstance(value, bool):
            flags.append(flag if value else "--no-" + flag[2:])
        elif isinstance(value, tuple):  # nargs="*"; KEY=VALUE pairs for tuple[tuple[str, str], ...]
            flags += [flag, *("=".join(v) if isinstance(v, tuple) else str(v) for v in value)]
        else:
            flags += [flag, str(value)]
    return flags


def run(config: DemoConfig, args: argparse.Namespace) -> int:
    from recsys.cli import main as recsys_main

    work = pathlib.Path(config.demo.workdir)
    steps = demo_steps(work, config.demo.quick, data_flags(config.data))
    started = time.perf_counter()
    for n, (title, argv) in enumerate(steps, 1):
        print(f"\n=== [{n}/{len(steps)}] {title}\n$ recsys {shlex.join(argv)}", flush=True)
        step_started = time.perf_counter()
        code = recsys_main(argv)
        if code:
            raise RecsysError(f"demo step {n} (recsys {argv[0]}) failed with exit code {code}")
        print(f"--- step {n} done in {time.perf_counter() - step_started:.0f} s", flush=True)
    print(f"\nDemo finished in {time.perf_counter() - started:.0f} s. Artifacts: {work / 'artifacts'}  "
          f"Reports: {work / 'reports'}  Batch scores: {work / 'batch'}")
    return 0
