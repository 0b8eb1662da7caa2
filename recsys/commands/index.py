"""`recsys index build`: rebuild a version's FAISS index with other settings, as a NEW version.

Versions are immutable, so the rebuilt index goes into a new version directory: every
file of the source version except `index/` is copied (the user tower, items.npz,
features/, ranking/ ... stay byte-identical, so their checksums carry over), the new
index is written, and the manifest records `parent_version` and the new `index` section.
"""
from __future__ import annotations

import argparse
import logging
import shutil

import numpy as np

from core import layout, registry
from core.config import add_config_args, config_from_args, config_to_dict
from core.errors import RecsysError

log = logging.getLogger(__name__)

_MANIFEST_OWN = ("version", "created", "git_sha", "checksums")


def register(sub: argparse._SubParsersAction) -> None:
    from retrieval import IndexConfig

    p = sub.add_parser("index", help="build the FAISS index of a trained version with other settings",
                       description="FAISS index operations on a trained version.")
    isub = p.add_subparsers(dest="index_command", metavar="ACTION", required=True)
    b = isub.add_parser("build", help="rebuild the index of --version into a new version",
                        description="Builds a FAISS index over the item embeddings (items.npz) of an existing "
                                    "version and writes it, with a copy of everything else, into a NEW version "
                                    "(versions are immutable). Records recall@N against exact search.")
    b.add_argument("--artifacts", default=str(registry.default_root()),
                   help="artifacts root (default: $RECSYS_ARTIFACTS or ./artifacts)")
    b.add_argument("--version", default="current", help="source version name or path (default: current)")
    b.add_argument("--new-version", default="", help="name of the new version (default: v<UTC time>-<random>)")
    b.add_argument("--promote", action=argparse.BooleanOptionalAction, default=False,
                   help="point CURRENT at the new version")
    add_config_args(b.add_argument_group("FAISS index"), IndexConfig,
                    help_text={"factory": "faiss.index_factory string: Flat, IVF1024,Flat, HNSW32, IVF1024,PQ16 ..."})
    b.set_defaults(func=run_build)


def run_build(args: argparse.Namespace) -> int:
    from core.layout import INDEX_DIR
    from features import FeatureStore
    from retrieval import IndexConfig, ItemIndex, UserTower, load_items

    try:
        config = config_from_args(IndexConfig, args)
    except ValueError as e:
        raise RecsysError(str(e)) from e
    source = registry.resolve_version(args.artifacts, args.version)
    manifest = registry.verify_version(source)
    item_ids, embeddings = load_items(source)
    features = FeatureStore.load(layout.features_dir(source))
    users = features.vocabularies["user_id"].tokens
    queries = UserTower.load(source).embed_ids(features, np.asarray(users, dtype=object)) if users else None
    try:
        index = ItemIndex.build(item_ids, embeddings, config, queries)
    except ValueError as e:
        raise RecsysError(str(e)) from e
    target = registry.start_version(args.artifacts, args.new_version or None)
    try:
        shutil.copytree(source, target, dirs_exist_ok=True,
                        ignore=lambda d, names: [n for n in names if (d == str(source) and n in (INDEX_DIR, registry.MANIFEST))])
        index.save(target / INDEX_DIR)
        new_manifest = {k: v for k, v in manifest.items() if k not in _MANIFEST_OWN}
        new_manifest["index"] = {"config": config_to_dict(config), **index.info}
        new_manifest["parent_version"] = source.name
        registry.finalize_version(target, new_manifest)
    except BaseException:
        shutil.rmtree(target, ignore_errors=True)
        raise
    if args.promote:
        registry.promote(args.artifacts, target.name)
    info = index.info
    print(f"version {target.name} (index {config.factory} over {source.name}'s items): {info['size']} × {info['dim']}, "
          f"recall@{info.get('recall_n')} vs exact {info.get('recall_at_n', float('nan')):.4f}, built in "
          f"{info['build_seconds']:.1f} s{'; promoted' if args.promote else ''}")
    return 0
