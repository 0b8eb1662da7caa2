"""The experiment config (A/B arms, shadow, canary) and the user → arm assignment, in one place.

The config is one JSON file beside the registry (`<artifacts root>/experiment.json` by default);
`recsys experiment set|show|stop` writes and reads it, the server re-reads it when its mtime
changes (serving/experiments.py) and `recsys experiment report` reads its arms and shares.

Assignment (documented, stable across processes, restarts and machines):

    bucket(salt, user) = int.from_bytes(sha256(f"{salt}:{user_id}".encode("utf-8")).digest()[:8], "big") % 10_000

Buckets are laid out once per config: the non-control, non-canary arms take consecutive ranges
from bucket 0 in config order, the canary arm (if any) takes the TOP of the range
[10_000 − its share, 10_000), and the control arm everything in between. So a ramping canary
only ever takes users from control (every other arm's users stay where they are), and a user's
arm changes only when the config changes. Different salts give independent assignments
(sha256 of different prefixes).

File format (JSON object):

    {"name": "quality-ab",              experiment name (logged, shown)
     "salt": "quality-ab-1",            hashing salt (default: the name)
     "control": "A",                    the arm the report compares against (default: the first arm)
     "allow_force": false,              requests may pick an arm with RecommendRequest.force_arm
                                        (also needs the server's --experiment-allow-force)
     "arms": [{"name": "A", "share": 0.5, "version": "current"},
              {"name": "B", "share": 0.5, "version": "current",
               "weights": {"engagement": 0.2, "quality": 1.0, "mode": "additive", "transform": "identity"}}],
     "shadow": {"version": "v2", "sample": 0.1, "k": 10},                       optional
     "canary": {"arm": "B", "start": 1767225600, "schedule": [[0, 0.01], [300, 0.05], [900, 0.2]],
                "window_s": 60, "min_requests": 50, "max_error_rate": 0.01,
                "max_p99_ratio": 2.0, "max_empty_rate": 0.05,
                "rolled_back": {"reason": "...", "at": 1767225700}}}                  optional

`version` is a version name under the artifacts root, or "current" (what the server serves
without an experiment). `weights` (optional) replace that version's default blend for the arm;
a request's own weights still win. Shares are fractions in [0, 1] summing to 1; with a canary
the canary arm's share is its schedule's step at (now − start) seconds and control gets what
the other arms leave. A rolled-back canary has share 0.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
import pathlib
import re
import tempfile
import time
from collections.abc import Mapping, Sequence
from typing import Any

BUCKETS = 10_000
EXPERIMENT_FILE = "experiment.json"
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
_WEIGHT_KEYS = ("engagement", "quality", "mode", "transform")
_MODES = ("additive", "multiplicative")
_TRANSFORMS = ("identity", "log", "logit")


class ExperimentConfigError(ValueError):
    """The experiment file is malformed; the message names the key."""


def bucket(salt: str, user_id: str) -> int:
    """The user's bucket in [0, BUCKETS) under `salt` (see the module docstring for the formula)."""
    digest = hashlib.sha256(f"{salt}:{user_id}".encode()).digest()
    return int.from_bytes(digest[:8], "big") % BUCKETS


@dataclasses.dataclass(frozen=True)
class ArmWeights:
    engagement: float
    quality: float
    mode: str = "additive"
    transform: str = "identity"


@dataclasses.dataclass(frozen=True)
class Arm:
    name: str
    share: float
    version: str = "current"
    weights: ArmWeights | None = None


@dataclasses.dataclass(frozen=True)
class Shadow:
    version: str
    sample: float = 1.0
    k: int = 10


@dataclasses.dataclass(frozen=True)
class Canary:
    arm: str
    schedule: tuple[tuple[float, float], ...]  # (seconds since start, share), offsets increasing
    start: float = 0.0
    window_s: float = 60.0
    min_requests: int = 50
    max_error_rate: float = 0.01
    max_p99_ratio: float = 2.0
    max_empty_rate: float = 0.05
    rolled_back: Mapping[str, Any] | None = None  # {"reason": str, "at": epoch seconds}

    def share_at(self, now: float) -> float:
        """The scheduled share at wall time `now` (0 before the first step, and once rolled back)."""
        if self.rolled_back:
            return 0.0
        share = 0.0
        for offset, value in self.schedule:
            if now - self.start >= offset:
                share = value
        return share


@dataclasses.dataclass(frozen=True)
class Experiment:
    name: str
    salt: str
    control: str
    arms: tuple[Arm, ...]
    allow_force: bool = False
    shadow: Shadow | None = None
    canary: Canary | None = None

    def arm(self, name: str) -> Arm:
        for a in self.arms:
            if a.name == name:
                return a
        raise KeyError(name)

    @property
    def versions(self) -> tuple[str, ...]:
        """Every version the config needs loaded (arms and shadow), "current" included, in order."""
        names = [a.version for a in self.arms] + ([self.shadow.version] if self.shadow else [])
        return tuple(dict.fromkeys(names))

    def shares(self, now: float | None = None) -> dict[str, float]:
        """Effective share per arm at `now` (the canary's schedule applied; control gets the rest)."""
        shares = {a.name: a.share for a in self.arms}
        if self.canary is not None:
            shares[self.canary.arm] = self.canary.share_at(time.time() if now is None else now)
            others = sum(v for k, v in shares.items() if k != self.control)
            shares[self.control] = max(0.0, 1.0 - others)
        return shares

    def layout(self, now: float | None = None) -> list[tuple[int, int, str]]:
        """[(first bucket, end bucket (exclusive), arm)] covering [0, BUCKETS); see the module docstring."""
        shares = self.shares(now)
        canary = self.canary.arm if self.canary is not None else None
        ranges: list[tuple[int, int, str]] = []
        lo = 0
        for a in self.arms:
            if a.name in (self.control, canary):
                continue
            hi = min(BUCKETS, lo + round(shares[a.name] * BUCKETS))
            ranges.append((lo, hi, a.name))
            lo = hi
        top = BUCKETS - round(shares[canary] * BUCKETS) if canary else BUCKETS
        top = max(top, lo)
        ranges.append((lo, top, self.control))
        if canary:
            ranges.append((top, BUCKETS, canary))
        return [r for r in ranges if r[1] > r[0]]

    def assign(self, user_id: str, layout: Sequence[tuple[int, int, str]] | None = None) -> str:
        """The user's arm (under `layout`, default: the layout now)."""
        return self.arm_at(bucket(self.salt, user_id), layout)

    def arm_at(self, b: int, layout: Sequence[tuple[int, int, str]] | None = None) -> str:
        """The arm of bucket `b` (a user's `bucket(salt, user)`) under `layout` (default: the layout now)."""
        for lo, hi, name in layout if layout is not None else self.layout():
            if lo <= b < hi:
                return name
        return self.control

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"name": self.name, "salt": self.salt, "control": self.control,
                               "allow_force": self.allow_force, "arms": []}
        for a in self.arms:
            arm: dict[str, Any] = {"name": a.name, "share": a.share, "version": a.version}
            if a.weights is not None:
                arm["weights"] = dataclasses.asdict(a.weights)
            out["arms"].append(arm)
        if self.shadow is not None:
            out["shadow"] = dataclasses.asdict(self.shadow)
        if self.canary is not None:
            c = dataclasses.asdict(self.canary)
            c["schedule"] = [list(s) for s in self.canary.schedule]
            if not c["rolled_back"]:
                del c["rolled_back"]
            else:
                c["rolled_back"] = dict(self.canary.rolled_back)
            out["canary"] = c
        return out


def _number(where: str, value: Any, lo: float = -math.inf, hi: float = math.inf) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ExperimentConfigError(f"{where}: expected a finite number, got {value!r}")
    if not lo <= value <= hi:
        raise ExperimentConfigError(f"{where}: must be in [{lo:g}, {hi:g}], got {value!r}")
    return float(value)


def _only(where: str, raw: Mapping[str, Any], allowed: Sequence[str]) -> None:
    if not isinstance(raw, Mapping):
        raise ExperimentConfigError(f"{where}: expected an object, got {type(raw).__name__}")
    unknown = sorted(set(raw) - set(allowed))
    if unknown:
        raise ExperimentConfigError(f"{where}: unknown key(s) {unknown}; allowed: {list(allowed)}")


def _name(where: str, value: Any) -> str:
    if not isinstance(value, str) or not _NAME_RE.match(value):
        raise ExperimentConfigError(f"{where}: {value!r} is not a name (letters, digits, '.', '_', '-'; max 64)")
    return value


def _weights(where: str, raw: Any) -> ArmWeights:
    _only(where, raw, _WEIGHT_KEYS)
    e = _number(f"{where}.engagement", raw.get("engagement", 1.0), 0, 3)
    q = _number(f"{where}.quality", raw.get("quality", 1.0), 0, 3)
    for name, w in (("engagement", e), ("quality", q)):
        if 0 < w < 0.1:
            raise ExperimentConfigError(f"{where}.{name}: 0 or in [0.1, 3], got {w}")
    if e == 0 and q == 0:
        raise ExperimentConfigError(f"{where}: engagement and quality must not both be 0")
    mode, transform = raw.get("mode", "additive"), raw.get("transform", "identity")
    if mode not in _MODES:
        raise ExperimentConfigError(f"{where}.mode: one of {list(_MODES)}, got {mode!r}")
    if transform not in _TRANSFORMS:
        raise ExperimentConfigError(f"{where}.transform: one of {list(_TRANSFORMS)}, got {transform!r}")
    if mode == "multiplicative" and transform != "identity":
        raise ExperimentConfigError(f"{where}.transform: the multiplicative mode takes 'identity' only, got "
                                    f"{transform!r}")
    return ArmWeights(e, q, mode, transform)


def parse_experiment(raw: Any) -> Experiment:
    """A validated Experiment from the file's JSON object; ExperimentConfigError names the first bad key."""
    _only("experiment", raw, ("name", "salt", "control", "allow_force", "arms", "shadow", "canary"))
    name = _name("name", raw.get("name"))
    salt = raw.get("salt", name)
    if not isinstance(salt, str) or not salt:
        raise ExperimentConfigError(f"salt: a non-empty string, got {salt!r}")
    arms_raw = raw.get("arms")
    if not isinstance(arms_raw, list) or not arms_raw:
        raise ExperimentConfigError("arms: a non-empty list of {name, share, version[, weights]}")
    arms = []
    for i, a in enumerate(arms_raw):
        where = f"arms[{i}]"
        _only(where, a, ("name", "share", "version", "weights"))
        version = a.get("version", "current")
        if version != "current":
            _name(f"{where}.version", version)
        arms.append(Arm(_name(f"{where}.name", a.get("name")), _number(f"{where}.share", a.get("share"), 0, 1),
                        version, _weights(f"{where}.weights", a["weights"]) if a.get("weights") is not None else None))
    names = [a.name for a in arms]
    if len(set(names)) != len(names):
        raise ExperimentConfigError(f"arms: names must be unique, got {names}")
    total = sum(a.share for a in arms)
    if abs(total - 1.0) > 1e-6:
        raise ExperimentConfigError(f"arms: shares must sum to 1, got {total:g} ({dict(zip(names, (a.share for a in arms)))})")
    control = raw.get("control", names[0])
    if control not in names:
        raise ExperimentConfigError(f"control: {control!r} is not an arm ({names})")
    allow_force = raw.get("allow_force", False)
    if not isinstance(allow_force, bool):
        raise ExperimentConfigError(f"allow_force: true or false, got {allow_force!r}")
    shadow = None
    if raw.get("shadow") is not None:
        s = raw["shadow"]
        _only("shadow", s, ("version", "sample", "k"))
        version = s.get("version", "current")
        if version != "current":
            _name("shadow.version", version)
        k = s.get("k", 10)
        if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= 1000:
            raise ExperimentConfigError(f"shadow.k: an integer in [1, 1000], got {k!r}")
        shadow = Shadow(version, _number("shadow.sample", s.get("sample", 1.0), 0, 1), k)
    canary = None
    if raw.get("canary") is not None:
        c = raw["canary"]
        _only("canary", c, ("arm", "start", "schedule", "window_s", "min_requests", "max_error_rate",
                            "max_p99_ratio", "max_empty_rate", "rolled_back"))
        arm = c.get("arm")
        if arm not in names:
            raise ExperimentConfigError(f"canary.arm: {arm!r} is not an arm ({names})")
        if arm == control:
            raise ExperimentConfigError("canary.arm: the canary cannot be the control arm")
        schedule_raw = c.get("schedule")
        if not isinstance(schedule_raw, list) or not schedule_raw:
            raise ExperimentConfigError("canary.schedule: a non-empty list of [seconds since start, share]")
        schedule = []
        for j, step in enumerate(schedule_raw):
            if not isinstance(step, list) or len(step) != 2:
                raise ExperimentConfigError(f"canary.schedule[{j}]: [seconds, share], got {step!r}")
            schedule.append((_number(f"canary.schedule[{j}][0]", step[0], 0),
                             _number(f"canary.schedule[{j}][1]", step[1], 0, 1)))
        if any(b[0] <= a[0] for a, b in zip(schedule, schedule[1:])):
            raise ExperimentConfigError("canary.schedule: offsets must increase")
        others = sum(a.share for a in arms if a.name not in (arm, control))
        if max(s for _, s in schedule) + others > 1 + 1e-9:
            raise ExperimentConfigError(f"canary.schedule: the largest share plus the other arms' {others:g} "
                                        "exceeds 1")
        min_requests = c.get("min_requests", 50)
        if isinstance(min_requests, bool) or not isinstance(min_requests, int) or min_requests < 1:
            raise ExperimentConfigError(f"canary.min_requests: an integer >= 1, got {min_requests!r}")
        rolled = c.get("rolled_back")
        if rolled is not None and not isinstance(rolled, Mapping):
            raise ExperimentConfigError(f"canary.rolled_back: an object {{reason, at}}, got {rolled!r}")
        canary = Canary(arm, tuple(schedule), _number("canary.start", c.get("start", 0.0), 0),
                        _number("canary.window_s", c.get("window_s", 60.0), 0.1),
                        min_requests, _number("canary.max_error_rate", c.get("max_error_rate", 0.01), 0, 1),
                        _number("canary.max_p99_ratio", c.get("max_p99_ratio", 2.0), 1),
                        _number("canary.max_empty_rate", c.get("max_empty_rate", 0.05), 0, 1), rolled or None)
    return Experiment(name, salt, control, tuple(arms), allow_force, shadow, canary)


DEFAULT_CANARY_SCHEDULE: tuple[tuple[float, float], ...] = ((0.0, 0.01), (300.0, 0.05), (900.0, 0.2))


def with_canary(experiment: Experiment, version: str, start: float,
                schedule: Sequence[tuple[float, float]] = DEFAULT_CANARY_SCHEDULE) -> Experiment:
    """`experiment` with `version` as its canary: a new arm `canary-<version>` (base share 0: its share is the
    schedule's step, taken from control) ramped from `start`. A previous canary arm (running or rolled back)
    is removed and its base share given to control; its guardrail settings are kept. Validated like a file
    (ExperimentConfigError when, e.g., the schedule does not fit beside the other arms)."""
    raw = experiment.to_dict()
    old = experiment.canary
    if old is not None:
        share = next(a["share"] for a in raw["arms"] if a["name"] == old.arm)
        raw["arms"] = [a for a in raw["arms"] if a["name"] != old.arm]
        for a in raw["arms"]:
            if a["name"] == raw["control"]:
                a["share"] += share
    arm = f"canary-{version}"
    raw["arms"].append({"name": arm, "share": 0.0, "version": version})
    guardrails = {k: v for k, v in (raw.get("canary") or {}).items()
                  if k in ("window_s", "min_requests", "max_error_rate", "max_p99_ratio", "max_empty_rate")}
    raw["canary"] = {"arm": arm, "start": float(start), "schedule": [list(s) for s in schedule], **guardrails}
    return parse_experiment(raw)


def experiment_file(root: str | os.PathLike) -> pathlib.Path:
    """The experiment file of an artifacts root."""
    return pathlib.Path(root) / EXPERIMENT_FILE


def read_experiment(path: str | os.PathLike) -> Experiment | None:
    """The validated experiment in `path`; None when the file does not exist (no experiment running).

    Raises ExperimentConfigError (naming the file) when it is unreadable or invalid."""
    p = pathlib.Path(path)
    try:
        text = p.read_text()
    except FileNotFoundError:
        return None
    except OSError as e:
        raise ExperimentConfigError(f"{p}: unreadable ({e})") from e
    try:
        raw = json.loads(text)
    except ValueError as e:
        raise ExperimentConfigError(f"{p}: not valid JSON ({e})") from e
    try:
        return parse_experiment(raw)
    except ExperimentConfigError as e:
        raise ExperimentConfigError(f"{p}: {e}") from e


def write_experiment(path: str | os.PathLike, experiment: Experiment) -> pathlib.Path:
    """Writes the experiment atomically (temp file + rename): a reader sees the old or the new file, whole."""
    p = pathlib.Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=p.parent, prefix=f".{p.name}.")
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(experiment.to_dict(), f, indent=2)
            f.write("\n")
        os.replace(tmp, p)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return p


# -- list overlap (shadow comparisons) ---------------------------------------------------------------
def jaccard(a: Sequence[str], b: Sequence[str]) -> float:
    """|A ∩ B| / |A ∪ B| of two lists' item sets (1.0 for two empty lists)."""
    sa, sb = set(a), set(b)
    union = len(sa | sb)
    return 1.0 if union == 0 else len(sa & sb) / union


def rbo(a: Sequence[str], b: Sequence[str], k: int, p: float = 0.9) -> float:
    """Rank-biased overlap of the top k of two rankings (Webber et al. 2010), truncated at depth k and
    normalised so two identical top-k lists score 1:  (1 − p) Σ_{d=1..k} p^(d−1) |A_:d ∩ B_:d| / d  ÷ (1 − p^k).
    Two empty lists score 1; k ≥ 1."""
    if k < 1:
        raise ValueError(f"rbo: k must be >= 1, got {k}")
    if not a and not b:
        return 1.0
    seen_a: set[str] = set()
    seen_b: set[str] = set()
    overlap = 0
    total = 0.0
    for d in range(1, k + 1):
        x = a[d - 1] if d <= len(a) else None
        y = b[d - 1] if d <= len(b) else None
        if x is not None and y is not None and x == y:
            overlap += 1
        else:
            if x is not None:
                overlap += x in seen_b
                seen_a.add(x)
            if y is not None:
                overlap += y in seen_a
                seen_b.add(y)
        if x is not None and y is not None and x == y:
            seen_a.add(x)
            seen_b.add(y)
        total += p ** (d - 1) * overlap / d
    return (1 - p) * total / (1 - p ** k)
