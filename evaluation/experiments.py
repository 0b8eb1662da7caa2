"""Online-experiment statistics from exported events (`recsys experiment report`, bench/experiments.py).

Input: rows of the exported event table (feedback/export.py SCHEMA, with its `arm` column):
served lists as impression rows (request_id, position, arm) and engagement / rating rows.

Attribution: an engaged row that names a request_id of a served list in the data belongs to
that list's arm (exact, also after a config change or a forced arm); otherwise to the arm the
server stamped on the event (the user's assignment when LogEvents ran). Rows with no arm are
outside the experiment and ignored.

Per arm (the unit of randomisation is the user, so every interval treats a user's rows as one
cluster — impression-level binomial intervals would be too narrow when users see many lists):
  users, lists, impressions, engagements (all engaged rows),
  CTR@k = distinct engaged (request, position ≤ k) ÷ impressions at positions ≤ k,
  mean rating of rated engaged items,
each with a 95% confidence interval from the delta method for a ratio of per-user sums
  R = Σy / Σx,  Var(R) ≈ Var(y_u − R·x_u) / (n · x̄²),
and against control a two-sided z-test of the difference (normal approximation:
z = (R_b − R_a) / √(se_a² + se_b²), p = 2·(1 − Φ(|z|)), scipy.stats.norm).

Sample-ratio mismatch: users per arm against the expected shares, Pearson chi-square
(scipy.stats.chisquare); SRM is flagged when p < `srm_alpha` (0.001, the usual threshold, so
a real experiment rarely trips it by chance).
"""
from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from typing import Any

import numpy as np
import pandas as pd
from scipy import stats

ENGAGED = ("engagement", "rating")


@dataclasses.dataclass(frozen=True)
class RatioEstimate:
    value: float
    se: float
    n: int  # users contributing

    @property
    def ci(self) -> tuple[float, float]:
        half = float(stats.norm.ppf(0.975)) * self.se
        return self.value - half, self.value + half


def ratio_estimate(y: np.ndarray, x: np.ndarray) -> RatioEstimate:
    """Σy/Σx over users with its delta-method standard error (NaN when undefined)."""
    y = np.asarray(y, dtype=np.float64)
    x = np.asarray(x, dtype=np.float64)
    n = len(x)
    if n == 0 or x.sum() <= 0:
        return RatioEstimate(math.nan, math.nan, n)
    r = y.sum() / x.sum()
    if n < 2:
        return RatioEstimate(float(r), math.nan, n)
    resid = y - r * x
    se = math.sqrt(resid.var(ddof=1) / n) / x.mean()
    return RatioEstimate(float(r), float(se), n)


def compare(a: RatioEstimate, b: RatioEstimate) -> dict[str, float]:
    """B − A with its 95% CI and the two-sided p-value (normal approximation)."""
    diff = b.value - a.value
    se = math.sqrt(a.se ** 2 + b.se ** 2)
    if not (math.isfinite(se) and se > 0):
        return {"diff": diff, "ci_low": math.nan, "ci_high": math.nan, "z": math.nan, "p_value": math.nan,
                "relative": diff / a.value if a.value else math.nan}
    z = diff / se
    half = float(stats.norm.ppf(0.975)) * se
    return {"diff": diff, "ci_low": diff - half, "ci_high": diff + half, "z": z,
            "p_value": float(2 * stats.norm.sf(abs(z))), "relative": diff / a.value if a.value else math.nan}


def srm_check(users: Mapping[str, int], shares: Mapping[str, float], alpha: float = 0.001) -> dict[str, Any]:
    """Chi-square of users per arm against the expected shares (arms with share 0 must have no users)."""
    arms = sorted(set(users) | set(shares))
    observed = np.array([users.get(a, 0) for a in arms], dtype=np.float64)
    total = observed.sum()
    share = np.array([shares.get(a, 0.0) for a in arms], dtype=np.float64)
    if total == 0 or share.sum() <= 0:
        return {"chi2": math.nan, "p_value": math.nan, "mismatch": False, "observed": dict(zip(arms, observed)),
                "expected": {}}
    share = share / share.sum()
    zero = share == 0
    if (observed[zero] > 0).any():  # users in an arm that should have none: a mismatch whatever the rest says
        return {"chi2": math.inf, "p_value": 0.0, "mismatch": True,
                "observed": {a: int(o) for a, o in zip(arms, observed)},
                "expected": {a: float(total * s) for a, s in zip(arms, share)}}
    keep = ~zero
    chi2, p = stats.chisquare(observed[keep], total * share[keep])
    return {"chi2": float(chi2), "p_value": float(p), "mismatch": bool(p < alpha),
            "observed": {a: int(o) for a, o in zip(arms, observed)},
            "expected": {a: float(total * s) for a, s in zip(arms, share)}}


def attribute(frame: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(impressions, engaged rows) with an `arm` each (see the module docstring); rows without an arm dropped."""
    if "arm" not in frame.columns:
        frame = frame.assign(arm="")
    frame = frame[["user_id", "type", "position", "request_id", "arm", "rating"]]
    frame = frame.assign(arm=frame["arm"].fillna("").astype(str), request_id=frame["request_id"].fillna("").astype(str))
    imps = frame[(frame["type"] == "impression") & (frame["arm"] != "")]
    served_arm = imps[imps["request_id"] != ""].drop_duplicates("request_id").set_index("request_id")["arm"]
    eng = frame[frame["type"].isin(ENGAGED)].copy()
    mapped = eng["request_id"].map(served_arm)
    eng["arm"] = mapped.where(mapped.notna(), eng["arm"]).astype(str)
    return imps, eng[eng["arm"] != ""]


def analyze(frame: pd.DataFrame, control: str, shares: Mapping[str, float] | None = None, k: int = 10,
            srm_alpha: float = 0.001) -> dict[str, Any]:
    """The report's numbers (JSON-ready dict) from an exported event table; see the module docstring."""
    imps, eng = attribute(frame)
    imps_k = imps[(imps["position"] >= 1) & (imps["position"] <= k)]
    clicks = eng[(eng["request_id"] != "") & (eng["position"] >= 1) & (eng["position"] <= k)]
    clicks = clicks.drop_duplicates(["request_id", "position"]).merge(  # only answers to served positions ≤ k
        imps_k[["request_id", "position"]].drop_duplicates(), on=["request_id", "position"])
    rated = eng[(eng["type"] == "rating") & eng["rating"].notna()]
    arms = sorted(set(imps["arm"]) | set(eng["arm"]) | set(shares or {}))
    if control not in arms:
        arms.append(control)
    per_arm: dict[str, Any] = {}
    estimates: dict[str, dict[str, RatioEstimate]] = {}
    for arm in arms:
        ia, ca, ra = imps_k[imps_k["arm"] == arm], clicks[clicks["arm"] == arm], rated[rated["arm"] == arm]
        users = pd.Index(ia["user_id"].unique()).union(pd.Index(eng.loc[eng["arm"] == arm, "user_id"].unique()))
        n_imp = ia.groupby("user_id").size().reindex(users, fill_value=0).to_numpy()
        n_click = ca.groupby("user_id").size().reindex(users, fill_value=0).to_numpy()
        ctr = ratio_estimate(n_click, n_imp)
        by_user = ra.groupby("user_id")["rating"]
        rating = ratio_estimate(by_user.sum().to_numpy(), by_user.size().to_numpy())
        estimates[arm] = {"ctr": ctr, "rating": rating}
        per_arm[arm] = {
            "users": int(len(users)), "lists": int(imps.loc[imps["arm"] == arm, "request_id"].nunique()),
            "impressions": int((imps["arm"] == arm).sum()), "impressions_at_k": int(len(ia)),
            "engagements": int((eng["arm"] == arm).sum()), "clicks_at_k": int(len(ca)), "ratings": int(len(ra)),
            "ctr_at_k": ctr.value, "ctr_ci": list(ctr.ci), "mean_rating": rating.value, "rating_ci": list(rating.ci)}
    tests = {}
    for arm in arms:
        if arm == control:
            continue
        tests[arm] = {"ctr_at_k": compare(estimates[control]["ctr"], estimates[arm]["ctr"]),
                      "mean_rating": compare(estimates[control]["rating"], estimates[arm]["rating"])}
    users = {a: per_arm[a]["users"] for a in arms}
    srm = srm_check(users, shares, srm_alpha) if shares else None
    return {"k": k, "control": control, "arms": per_arm, "tests": tests, "srm": srm}
