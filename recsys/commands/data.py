"""`recsys data`: fetch a source, describe it, and show split statistics."""
from __future__ import annotations

import argparse
import dataclasses
import json

from core.config import section
from recsys.commands import add_command
from recsys.commands._data import DATA_HELP
from workflows.data import DataConfig, load_split


@dataclasses.dataclass(frozen=True)
class DataCommandConfig:
    """`recsys data`: the data section alone (the same [data.*] tables train and evaluate read)."""

    data: DataConfig = section(DataConfig)


def register(sub: argparse._SubParsersAction) -> None:
    p = add_command(sub, "data", DataCommandConfig, run, help_text={f"data.{k}": v for k, v in DATA_HELP.items()},
                    description="Loads a data source (downloading MovieLens-100k into the cache on first use), "
                                "prints its description and the train/validation/test split statistics.")
    p.add_argument("--json", dest="as_json", action="store_true", help="print one JSON document instead of text")


def run(config: DataCommandConfig, args: argparse.Namespace) -> int:
    dataset, split = load_split(config.data)
    info = {"dataset": dataset.describe(), "split": split.stats()}
    inferred = dataset.provenance.get("inferred_columns", {})  # files source: feature kinds guessed per file
    if inferred:
        info["inferred_columns"] = inferred
    if args.as_json:
        print(json.dumps(info, indent=2))
        return 0
    d = info["dataset"]
    print(f"{d['name']}: {d['interactions']:,} interactions ({d['engaged']:,} engaged, "
          f"{d['impressions_not_engaged']:,} shown-not-engaged), {d['users']:,} users, {d['items']:,} items "
          f"(catalogue {d['catalogue_items']:,}), density {d['density']:.4f}, {d['rated']:,} rated")
    print(f"  user features: {', '.join(d['user_features']) or 'none'}; item features: "
          f"{', '.join(d['item_features']) or 'none'}")
    if inferred:
        from features import format_inferred
        for flag, found in inferred.items():
            print(f"  inferred from {flag} {found['file']} (no feature flags given): {format_inferred(found['columns'])}")
    s = info["split"]
    print(f"split {s['config']['strategy']} (test {s['config']['test_fraction']}, validation "
          f"{s['config']['val_fraction']} of train):")
    for part in ("train", "validation", "test"):
        x = s[part]
        print(f"  {part:<10} {x['rows']:>10,} rows {x['engaged']:>10,} engaged {x['users']:>8,} users {x['items']:>8,} items")
    print(f"  test items unseen in train: {s['test_items_unseen_in_train']}; "
          f"test users unseen in train: {s['test_users_unseen_in_train']}")
    return 0
