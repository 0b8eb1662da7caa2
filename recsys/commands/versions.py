"""`recsys versions` and `recsys promote`: list trained versions and switch the serving pointer."""
from __future__ import annotations

import argparse
import dataclasses
import json
import math

from core import registry
from core.config import build_config
from core.errors import ArtifactError, RecsysError
from recsys.commands import add_command


@dataclasses.dataclass(frozen=True)
class VersionsConfig:
    artifacts: str = ""   # artifacts root ("" = $RECSYS_ARTIFACTS or ./artifacts)
    json: bool = False    # print one JSON document instead of the table
    keep: int = 0         # `versions gc`: keep the newest N versions (CURRENT and experiment versions always kept)
    dry_run: bool = False  # `versions gc`: only print what would be deleted


@dataclasses.dataclass(frozen=True)
class PromoteConfig:
    artifacts: str = ""   # artifacts root ("" = $RECSYS_ARTIFACTS or ./artifacts)
    version: str = ""     # the version to point CURRENT at (also the positional VERSION)


_ARTIFACTS_HELP = {"artifacts": "artifacts root (empty = $RECSYS_ARTIFACTS or ./artifacts)"}


def register(sub: argparse._SubParsersAction) -> None:
    v = add_command(sub, "versions", VersionsConfig, run_versions, help_text={"": {
        **_ARTIFACTS_HELP, "json": "print one JSON document (name, current, created, lineage, metrics) per version",
        "keep": "with `gc`: how many of the newest versions to keep (CURRENT and every version an experiments "
                "config names are kept besides)",
        "dry_run": "with `gc`: print what would be deleted, delete nothing"}},
        description="Lists the version directories under --artifacts (newest last), marking the one the CURRENT "
                    "pointer names, with each one's lineage (parent, retrain decision) and headline metrics. "
                    "`recsys versions gc --keep N` deletes all but the newest N versions, never CURRENT nor a "
                    "version the running experiment (experiment.json in the root) names; it takes the "
                    "retrain lock, so it never runs beside a retrain.")
    v.add_argument("action", nargs="?", choices=["list", "gc"], default="list",
                   help="list (default) or gc (garbage-collect old versions)")
    q = add_command(sub, "promote", PromoteConfig, run_promote, build=_build_promote,
                    help_text={"": {**_ARTIFACTS_HELP, "version": "the version to promote (or the positional "
                                                                  "VERSION)"}},
                    description="Verifies every checksum of VERSION's manifest, then replaces the CURRENT pointer "
                                "atomically (write a temp file, rename over). A running server watching the "
                                "registry swaps to it; promoting the previous version is the rollback.")
    q.add_argument("positional_version", nargs="?", metavar="VERSION", default=argparse.SUPPRESS,
                   help="a version name under --artifacts (the same as --version)")


def _root(artifacts: str) -> str:
    return artifacts or str(registry.default_root())


def run_versions(config: VersionsConfig, args: argparse.Namespace) -> int:
    root = _root(config.artifacts)
    if getattr(args, "action", "list") == "gc":
        return _run_gc(config, root)
    if config.keep or config.dry_run:
        raise RecsysError("--keep and --dry-run belong to `recsys versions gc`")
    names = registry.list_versions(root)
    if config.json:
        print(json.dumps(_finite(version_records(root)), indent=2, default=str))
        return 0
    if not names:
        print(f"no versions under {root}: run `recsys train`")
        return 0
    try:
        current = registry.current_version(root)
    except ArtifactError:
        current = ""
    for name in names:
        try:
            manifest = registry.read_manifest(registry.resolve_version(root, name))
        except ArtifactError as e:  # a broken version is listed, not fatal: it is what you may need to see
            print(f"{'*' if name == current else ' '} {name}  UNREADABLE: {e}")
            continue
        print(f"{'*' if name == current else ' '} {name}  {_summary(manifest)}")
    return 0


def _summary(manifest: dict) -> str:
    """One line: creation time, data source, the stages the version holds, lineage and headline metrics."""
    data = manifest.get("data")
    source = data.get("source", {}) if isinstance(data, dict) else {}
    source = source.get("source", "?") if isinstance(source, dict) else str(source)
    stages = [k for k in ("retrieval", "index", "ranking") if k in manifest]
    base = f"  (retriever of {manifest['base_version']})" if manifest.get("base_version") else ""
    line = f"created {str(manifest.get('created', '?'))[:19]}  data {source}  stages {','.join(stages) or '-'}{base}"
    lineage = manifest.get("lineage")
    if isinstance(lineage, dict):
        window = lineage.get("data_window", {})
        line += (f"\n      retrain: parent {lineage.get('parent') or '-'}  {lineage.get('decision', '?')}"
                 f"  window [{window.get('holdout_start', '?')}, {window.get('cutoff', '?')})"
                 f"{'  warm start' if lineage.get('warm_start') else ''}")
        reasons = lineage.get("reasons") or []
        if reasons and lineage.get("decision") == "refused":
            line += "  why: " + "; ".join(reasons)
    metrics = headline_metrics(manifest)
    if metrics:
        line += "\n      " + "  ".join(f"{k} {_num(v)}" for k, v in metrics.items())
    return line


def _num(v) -> str:
    return "-" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.4f}"


def headline_metrics(manifest: dict) -> dict:
    """The numbers worth one line: the retrain gate's (held-out window, pipeline) when the version was
    gated, else the two-tower's exact test ndcg@10 / recall@100 recorded at training."""
    lineage = manifest.get("lineage")
    if isinstance(lineage, dict) and isinstance(lineage.get("gate"), dict):
        cand = lineage["gate"].get("candidate") or {}
        serving = lineage["gate"].get("serving") or {}
        out = {f"window {k}": cand.get(k) for k in ("ndcg@10", "mean_hit_rating@10", "engagement_ece")}
        if serving:
            out["serving ndcg@10"] = serving.get("ndcg@10")
        return out
    test = manifest.get("retrieval", {}).get("metrics", {}).get("test_exact", {}) if isinstance(
        manifest.get("retrieval"), dict) else {}
    return {f"two-tower test {k}": v for k, v in test.items() if k in ("ndcg_at_10", "recall_at_100")}


def version_records(root: str) -> list[dict]:
    """`recsys versions --json`: one record per version, oldest name first."""
    try:
        current = registry.current_version(root)
    except ArtifactError:
        current = ""
    out = []
    for name in registry.list_versions(root):
        try:
            manifest = registry.read_manifest(registry.resolve_version(root, name))
        except ArtifactError as e:
            out.append({"version": name, "current": name == current, "error": str(e)})
            continue
        lineage = manifest.get("lineage") if isinstance(manifest.get("lineage"), dict) else None
        out.append({"version": name, "current": name == current, "created": manifest.get("created"),
                    "source": (manifest.get("data") or {}).get("source", {}).get("source"),
                    "base_version": manifest.get("base_version"),
                    "lineage": None if lineage is None else {k: lineage.get(k) for k in
                                                            ("parent", "decision", "reasons", "data_window",
                                                             "warm_start", "gate")},
                    "metrics": headline_metrics(manifest)})
    return out


def _finite(x):
    """NaN → null, so the output is strict JSON."""
    if isinstance(x, float) and not math.isfinite(x):
        return None
    if isinstance(x, dict):
        return {k: _finite(v) for k, v in x.items()}
    if isinstance(x, list):
        return [_finite(v) for v in x]
    return x


def _run_gc(config: VersionsConfig, root: str) -> int:
    from workflows.retrain import gc

    if config.keep < 1:
        raise RecsysError("`recsys versions gc` needs --keep N (N >= 1): how many of the newest versions to keep")
    result = gc(root, config.keep, config.dry_run)
    if config.json:
        print(json.dumps(result, indent=2))
        return 0
    verb = "would delete" if config.dry_run else "deleted"
    print(f"{verb} {len(result['deleted'])} version(s): {', '.join(result['deleted']) or '-'}")
    print(f"kept (newest {config.keep}): {', '.join(result['kept']) or '-'}; protected (CURRENT, experiments): "
          f"{', '.join(result['protected']) or '-'}")
    return 0


def _build_promote(args: argparse.Namespace) -> PromoteConfig:
    """The positional VERSION is --version spelled the short way."""
    config = build_config(PromoteConfig, args)
    positional = getattr(args, "positional_version", "")
    if positional and hasattr(args, "version") and args.version != positional:
        raise RecsysError(f"two versions given: VERSION {positional!r} and --version {args.version!r}")
    return dataclasses.replace(config, version=positional) if positional else config


def run_promote(config: PromoteConfig, args: argparse.Namespace) -> int:
    if not config.version:
        raise RecsysError("give the version to promote: `recsys promote VERSION` (see `recsys versions`)")
    path = registry.promote(_root(config.artifacts), config.version)
    print(f"CURRENT -> {config.version} ({path})")
    return 0
