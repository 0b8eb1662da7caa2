"""Reference profiles: a quantity's bins, reference proportions and a reference sample, as JSON.

A numeric quantity is binned at its reference deciles (bins (-inf, q1], (q1, q2], …, (q9, inf);
repeated quantiles merge), and keeps a seeded sample of at most `sample_size` reference
values for the KS statistic. A categorical quantity keeps its `max_categories` most
frequent reference values; everything else (including values never seen in the reference)
falls into one "other" bin.
"""
from __future__ import annotations

import dataclasses
import json
import math
import os
import pathlib
from typing import Any, Literal

import numpy as np

from drift.stats import ks_statistic, psi

NUMERIC_BINS = 10
MAX_CATEGORIES = 20
SAMPLE_SIZE = 1000
KS_MAX_VALUES = 2000  # live values above this are thinned to evenly spaced order statistics for KS
OTHER = "__other__"  # the categorical bin of every value outside the reference's top categories


@dataclasses.dataclass(frozen=True)
class QuantityProfile:
    """One quantity's reference distribution.

    Attributes:
      kind: "numeric" (binned at quantiles; KS available) or "categorical" (PSI only).
      edges: numeric: the inner bin edges (deduplicated reference quantiles), ascending.
      categories: categorical: the reference's top values; bin i is categories[i], the last bin OTHER.
      proportions: reference share of each bin (len(edges) + 1 or len(categories) + 1).
      sample: numeric: up to SAMPLE_SIZE reference values (seeded draw), for KS.
      count: reference values the profile was fit on.
    """

    kind: Literal["numeric", "categorical"]
    proportions: tuple[float, ...]
    count: int
    edges: tuple[float, ...] = ()
    categories: tuple[str, ...] = ()
    sample: tuple[float, ...] = ()

    @classmethod
    def fit(cls, values: np.ndarray, kind: Literal["numeric", "categorical"], bins: int = NUMERIC_BINS,
            max_categories: int = MAX_CATEGORIES, sample_size: int = SAMPLE_SIZE, seed: int = 0) -> QuantityProfile:
        """Profiles reference `values` (NaN / None dropped). An empty reference has one bin and no mass."""
        if kind == "numeric":
            v = np.asarray(values, dtype=np.float64).ravel()
            v = v[np.isfinite(v)]
            if len(v) == 0:
                return cls("numeric", (0.0,), 0)
            edges = np.unique(np.quantile(v, np.arange(1, bins) / bins))
            counts = np.bincount(np.searchsorted(edges, v, side="left"), minlength=len(edges) + 1)
            rng = np.random.default_rng(seed)
            sample = v if len(v) <= sample_size else rng.choice(v, sample_size, replace=False)
            return cls("numeric", _shares(counts), len(v), edges=tuple(float(e) for e in edges),
                       sample=tuple(float(s) for s in np.sort(sample)))
        if kind != "categorical":
            raise ValueError(f"kind must be 'numeric' or 'categorical', got {kind!r}")
        v = _as_strings(values)
        if len(v) == 0:
            return cls("categorical", (0.0,), 0)
        uniq, counts = np.unique(v, return_counts=True)
        top = np.argsort(-counts, kind="stable")[:max_categories]
        categories = tuple(str(c) for c in uniq[top])
        shares = np.append(counts[top], counts.sum() - counts[top].sum())
        return cls("categorical", _shares(shares), len(v), categories=categories)

    def bin_counts(self, values: np.ndarray) -> np.ndarray:
        """[bins] counts of live `values` in this profile's bins (NaN / None dropped)."""
        if self.kind == "numeric":
            v = np.asarray(values, dtype=np.float64).ravel()
            v = v[np.isfinite(v)]
            return np.bincount(np.searchsorted(np.asarray(self.edges), v, side="left"),
                               minlength=len(self.proportions)).astype(np.int64)
        index = {c: i for i, c in enumerate(self.categories)}
        other = len(self.categories)
        codes = np.fromiter((index.get(s, other) for s in _as_strings(values)), dtype=np.int64)
        return np.bincount(codes, minlength=len(self.proportions)).astype(np.int64)

    def compare(self, values: np.ndarray) -> dict[str, float]:
        """{"psi", "ks", "n"} of live `values` against this reference (NaN where undefined: an
        empty side; KS of a categorical quantity)."""
        counts = self.bin_counts(values)
        n = int(counts.sum())
        out = {"psi": psi(np.asarray(self.proportions), counts) if self.count else float("nan"), "n": n}
        if self.kind == "numeric" and self.sample:
            out["ks"] = ks_statistic(np.asarray(self.sample), _thin(np.asarray(values, dtype=np.float64)))
        else:
            out["ks"] = float("nan")
        return out

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        return {k: list(v) if isinstance(v, tuple) else v for k, v in d.items()}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> QuantityProfile:
        return cls(kind=d["kind"], proportions=tuple(float(x) for x in d["proportions"]), count=int(d["count"]),
                   edges=tuple(float(x) for x in d.get("edges", ())),
                   categories=tuple(str(x) for x in d.get("categories", ())),
                   sample=tuple(float(x) for x in d.get("sample", ())))


@dataclasses.dataclass(frozen=True)
class Profile:
    """Named quantity profiles in groups (e.g. "input", "prediction"), plus free-form metadata."""

    groups: dict[str, dict[str, QuantityProfile]]
    meta: dict[str, Any] = dataclasses.field(default_factory=dict)

    def save(self, path: str | os.PathLike) -> pathlib.Path:
        p = pathlib.Path(path)
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(json.dumps({"meta": self.meta, "groups": {
            g: {name: q.to_dict() for name, q in qs.items()} for g, qs in self.groups.items()}}))
        return p

    @classmethod
    def load(cls, path: str | os.PathLike) -> Profile:
        d = json.loads(pathlib.Path(path).read_text())
        return cls({g: {name: QuantityProfile.from_dict(q) for name, q in qs.items()}
                    for g, qs in d["groups"].items()}, d.get("meta", {}))


def fit_profile(groups: dict[str, dict[str, tuple[np.ndarray, str]]], meta: dict[str, Any] | None = None,
                seed: int = 0) -> Profile:
    """Profile of {group: {name: (values, kind)}} (each quantity fit with QuantityProfile.fit)."""
    return Profile({g: {name: QuantityProfile.fit(v, kind, seed=seed) for name, (v, kind) in qs.items()}
                    for g, qs in groups.items()}, dict(meta or {}))


def compare_profiles(reference: Profile, live: dict[str, dict[str, np.ndarray]]) -> list[dict[str, Any]]:
    """One row per reference quantity present in `live`: group, quantity, kind, psi, ks, n (live values)."""
    rows = []
    for group, quantities in reference.groups.items():
        for name, q in quantities.items():
            if name in live.get(group, {}):
                rows.append({"group": group, "quantity": name, "kind": q.kind, **q.compare(live[group][name])})
    return rows


def _thin(values: np.ndarray, m: int = KS_MAX_VALUES) -> np.ndarray:
    """At most m evenly spaced order statistics of `values` (NaN dropped): the same empirical CDF to
    within about 1/m, so KS against the reference changes by at most that, at a fraction of the cost."""
    v = values[~np.isnan(values)]
    if len(v) <= m:
        return v
    return np.sort(v)[np.linspace(0, len(v) - 1, m).round().astype(np.int64)]


def _shares(counts: np.ndarray) -> tuple[float, ...]:
    total = float(np.sum(counts))
    return tuple(float(c) / total for c in counts)


def _as_strings(values: Any) -> np.ndarray:
    out = [str(v) for v in np.asarray(values, dtype=object).ravel()
           if v is not None and not (isinstance(v, float) and math.isnan(v))]
    return np.asarray(out, dtype=object)
