"""The README's demo: every step is a real `recsys` command line that the CLI accepts.

The demo itself (minutes of training on MovieLens-100k) runs in `scripts/demo.sh`, not in CI;
each step's behaviour is tested by its stage's tests. This catches the drift CI would not:
a flag renamed in a stage but not in the demo.
"""
from __future__ import annotations

import pathlib

import pytest

from recsys.cli import build_parser
from recsys.commands.demo import demo_steps


@pytest.mark.parametrize("quick", [False, True])
def test_every_demo_step_parses_with_the_real_cli(tmp_path: pathlib.Path, quick: bool) -> None:
    parser = build_parser()
    steps = demo_steps(tmp_path, quick)
    commands = [argv[0] for _, argv in steps]
    assert commands == ["data", "train", "batch-score", "evaluate", "versions", "serve-demo"]
    for _, argv in steps:
        args = parser.parse_args(argv)  # argparse exits (SystemExit) on an unknown flag
        assert callable(args.func)
    evaluate = parser.parse_args(steps[3][1])
    assert {"two_tower", "pipeline", "ease"} <= set(evaluate.models)
    assert evaluate.batch_output == [str(tmp_path / "batch")]
