import argparse
import dataclasses
from typing import Literal

import pytest

from core.config import add_config_args, config_from_args, config_to_dict


@dataclasses.dataclass(frozen=True)
class _Cfg:
    epochs: int = 3
    rate: float = 0.1
    name: str = "x"
    logq: bool = True
    kind: Literal["a", "b"] = "a"
    stages: tuple[str, ...] = ("r", "k")
    mapping: tuple[tuple[str, str], ...] = ()


def _parse(argv):
    p = argparse.ArgumentParser()
    add_config_args(p, _Cfg, prefix="m_")
    return config_from_args(_Cfg, p.parse_args(argv), prefix="m_")


def test_every_field_is_a_flag_with_its_default():
    assert _parse([]) == _Cfg()
    cfg = _parse(["--m-epochs", "5", "--m-rate", "0.5", "--no-m-logq", "--m-kind", "b", "--m-stages", "r",
                  "--m-mapping", "user_id=cust", "--m-name", "y"])
    assert cfg == _Cfg(5, 0.5, "y", False, "b", ("r",), (("user_id", "cust"),))
    assert config_to_dict(cfg)["mapping"] == (("user_id", "cust"),)


@pytest.mark.parametrize("argv", [["--m-kind", "c"], ["--m-epochs", "two"], ["--m-mapping", "novalue"]])
def test_bad_flag_values_are_rejected_by_argparse(argv):
    with pytest.raises(SystemExit):
        _parse(argv)
