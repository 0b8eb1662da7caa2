"""`recsys index build`: rebuild a version's FAISS index with other settings, as a NEW version."""
from __future__ import annotations

import argparse

from recsys.commands import COMMANDS, add_command


def register(sub: argparse._SubParsersAction) -> None:
    from workflows.index import IndexBuildConfig

    p = sub.add_parser("index", help=COMMANDS["index"][1],
                       description="FAISS index operations on a trained version.")
    isub = p.add_subparsers(dest="index_command", metavar="ACTION", required=True)
    add_command(isub, "build", IndexBuildConfig, run_build, help="rebuild the index of --version into a new version",
                help_text={
        "run": {"artifacts": "artifacts root (empty = $RECSYS_ARTIFACTS or ./artifacts)",
                "version": "source version: a name, 'current' or a version directory",
                "new_version": "name of the new version (empty = v<UTC time>-<random>)",
                "promote": "point CURRENT at the new version"},
        "index": {"factory": "faiss.index_factory string: Flat, IVF1024,Flat, HNSW32, IVF1024,PQ16 ..."}},
        description="Builds a FAISS index over the item embeddings (items.npz) of an existing version and writes "
                    "it, with a copy of everything else, into a NEW version (versions are immutable). Records "
                    "recall@N against exact search.")


def run_build(config, args: argparse.Namespace) -> int:
    from workflows.index import rebuild_index

    result = rebuild_index(config)
    info = result.info
    print(f"version {result.version_dir.name} (index {config.index.factory} over {result.source_dir.name}'s items): "
          f"{info['size']} × {info['dim']}, recall@{info.get('recall_n')} vs exact "
          f"{info.get('recall_at_n', float('nan')):.4f}, built in {info['build_seconds']:.1f} s"
          f"{'; promoted' if result.promoted else ''}")
    return 0
