"""The README's demo: every step is a real `recsys` command line that the CLI accepts, and data flags given to
`recsys demo` reach the steps that read data.

The demo on MovieLens-100k (minutes of training) runs in `scripts/demo.sh`; test_demo_run.py runs its steps for
real on a small synthetic dataset. This catches the drift cheaply: a flag renamed in a stage but not in the demo.
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


def test_data_flags_given_to_the_demo_reach_every_step_that_reads_data(tmp_path: pathlib.Path) -> None:
    from core.config import build_config
    from recsys.commands.demo import data_flags

    def data_config_from_args(args):
        return build_config(args.config_class, args).data

    parser = build_parser()
    given = ["--source", "synthetic", "--synthetic-num-users", "300", "--synthetic-popularity-exponent", "0.5",
             "--test-fraction", "0.25", "--strategy", "global_time"]
    demo = parser.parse_args(["demo", "--workdir", str(tmp_path), "--quick", *given])
    flags = data_flags(data_config_from_args(demo))
    assert sorted(flags) == sorted(given)
    steps = demo_steps(tmp_path, True, flags)
    for _, argv in steps:
        args = parser.parse_args(argv)
        if argv[0] in ("data", "train", "evaluate"):
            assert data_config_from_args(args) == data_config_from_args(demo), argv[0]
        else:
            assert "--source" not in argv
    # No data flags: MovieLens-100k, the README's steps exactly.
    default = parser.parse_args(["demo", "--workdir", str(tmp_path)])
    assert data_flags(data_config_from_args(default)) == []
    assert [argv for _, argv in demo_steps(tmp_path, False, [])] == [argv for _, argv in demo_steps(tmp_path)]
    assert demo_steps(tmp_path)[0][1] == ["data"]
    assert demo_steps(tmp_path)[1][1] == ["train", "--artifacts", str(tmp_path / "artifacts")]
