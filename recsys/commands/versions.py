"""`recsys versions` and `recsys promote`: list trained versions and switch the serving pointer."""
from __future__ import annotations

import argparse
import dataclasses

from core import registry
from core.config import build_config
from core.errors import ArtifactError, RecsysError
from recsys.commands import add_command


@dataclasses.dataclass(frozen=True)
class VersionsConfig:
    artifacts: str = ""   # artifacts root ("" = $RECSYS_ARTIFACTS or ./artifacts)


@dataclasses.dataclass(frozen=True)
class PromoteConfig:
    artifacts: str = ""   # artifacts root ("" = $RECSYS_ARTIFACTS or ./artifacts)
    version: str = ""     # the version to point CURRENT at (also the positional VERSION)


_ARTIFACTS_HELP = {"artifacts": "artifacts root (empty = $RECSYS_ARTIFACTS or ./artifacts)"}


def register(sub: argparse._SubParsersAction) -> None:
    add_command(sub, "versions", VersionsConfig, run_versions, help_text={"": _ARTIFACTS_HELP},
                description="Lists the version directories under --artifacts (newest last), marking the "
                            "one the CURRENT pointer names, with each one's headline metrics.")
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
    base = f"  (retriever of {manifest['base_version']})" if manifest.get("base_version") else ""
    return f"created {str(manifest.get('created', '?'))[:19]}  data {source}  stages {','.join(stages) or '-'}{base}"


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
