"""`recsys versions` and `recsys promote`: list trained versions and switch the serving pointer."""
from __future__ import annotations

import argparse

from core import registry
from core.errors import ArtifactError


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("versions", help="list trained artifact versions and the current one",
                       description="Lists the version directories under --artifacts (newest last), marking the "
                                   "one the CURRENT pointer names, with each one's headline metrics.")
    p.add_argument("--artifacts", default="", help="artifacts root (default: $RECSYS_ARTIFACTS or ./artifacts)")
    p.set_defaults(func=run_versions)
    q = sub.add_parser("promote", help="point CURRENT at a version (verified first; atomic)",
                       description="Verifies every checksum of VERSION's manifest, then replaces the CURRENT pointer "
                                   "atomically (write a temp file, rename over). A running server watching the "
                                   "registry swaps to it; promoting the previous version is the rollback.")
    q.add_argument("version", help="a version name under --artifacts")
    q.add_argument("--artifacts", default="", help="artifacts root (default: $RECSYS_ARTIFACTS or ./artifacts)")
    q.set_defaults(func=run_promote)


def _root(args: argparse.Namespace) -> str:
    return args.artifacts or str(registry.default_root())


def run_versions(args: argparse.Namespace) -> int:
    root = _root(args)
    names = registry.list_versions(root)
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
    """One line: creation time, data source and the stages the version holds."""
    data = manifest.get("data")
    source = data.get("source", {}) if isinstance(data, dict) else {}
    source = source.get("source", "?") if isinstance(source, dict) else str(source)
    stages = [k for k in ("retrieval", "index", "ranking") if k in manifest]
    return f"created {str(manifest.get('created', '?'))[:19]}  data {source}  stages {','.join(stages) or '-'}"


def run_promote(args: argparse.Namespace) -> int:
    path = registry.promote(_root(args), args.version)
    print(f"CURRENT -> {args.version} ({path})")
    return 0
