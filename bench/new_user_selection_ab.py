"""Times two implementations of evaluation.selection.select_new_user_mixture on a trained version's features.

  git show 5badbbf:evaluation/selection.py > /tmp/selection_old.py    # a full stable argsort per simulated user
  PYTHONPATH=$PWD .venv/bin/python bench/new_user_selection_ab.py <version dir> /tmp/selection_old.py \
      evaluation/selection.py bench/out/newuser-ab-10m.json

Prints CPU and wall seconds of each and whether the two (w, d) tables are identical (they must be).
"""
import importlib.util
import json
import pathlib
import sys
import time

import numpy as np

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent.parent))
from core import layout
from features import FeatureStore
from features.cooccurrence import NewUserConfig
from pipeline import RecommendPipeline


def load(name, path):
    spec = importlib.util.spec_from_file_location(name, path)
    m = importlib.util.module_from_spec(spec)
    sys.modules[name] = m  # dataclasses look their module up
    spec.loader.exec_module(m)
    return m

v = pathlib.Path(sys.argv[1])
features = FeatureStore.load(layout.features_dir(v))
model = RecommendPipeline.from_version_dir(v, verify=False)
fb = model.fallback_candidates
ids = np.asarray(fb.item_ids).astype(str)
order = np.argsort(ids, kind="stable")
ids, quality = ids[order], np.asarray(fb.quality, dtype=np.float64)[order]
histories = {str(u): [str(i) for i in items] for u, items in features.seen.items()}
cfg = NewUserConfig()
out = {}
for name, path in (("new", sys.argv[3]), ("old", sys.argv[2])):
    m = load("sel_" + name, path)
    t, w = time.process_time(), time.perf_counter()
    r = m.select_new_user_mixture(histories, ids, quality, model.fallback_weights(), cfg)
    out[name] = {"cpu_s": round(time.process_time() - t, 1), "wall_s": round(time.perf_counter() - w, 1),
                 "weight": r["weight"], "decay": r["decay"], "table": [round(x["ndcg@10"], 6) for x in r["table"]]}
    print(name, out[name]["cpu_s"], out[name]["wall_s"], r["weight"], r["decay"], flush=True)
print("tables identical:", out["old"]["table"] == out["new"]["table"])
json.dump(out, open(sys.argv[4], "w"), indent=1)
