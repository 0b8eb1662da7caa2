"""FAISS item index: build with `faiss.index_factory`, save/load, top-N search excluding seen items.

FAISS rows are positions in `item_ids` (items are added in order), so the row → id map
is just that array, saved beside the index. Scores are inner products (metric "ip", what
the two towers are trained for) or negated squared L2 distances (metric "l2"), so higher
is always better.
"""
from __future__ import annotations

import dataclasses
import json
import logging
import pathlib
import time
from collections.abc import Collection, Sequence

import faiss
import numpy as np

from core.errors import ArtifactError, ArtifactMismatchError, UnknownItemError
from retrieval.config import IndexConfig

log = logging.getLogger(__name__)

INDEX_FILE = "index.faiss"
IDS_FILE = "item_ids.npy"
CONFIG_FILE = "index.json"


class ItemIndex:
    """A FAISS index over item embeddings plus the row → item id map.

    Attributes:
      item_ids: [I] str, row r of the index is item_ids[r].
      config: the IndexConfig it was built with.
      info: build facts (dim, size, build seconds, recall_at_n vs exact) for the manifest.
    """

    def __init__(self, index: faiss.Index, item_ids: np.ndarray, config: IndexConfig, info: dict | None = None) -> None:
        if index.ntotal != len(item_ids):
            raise ArtifactMismatchError(f"FAISS index holds {index.ntotal} vectors but the id map has "
                                        f"{len(item_ids)} ids; rebuild the index")
        self.index = index
        self.item_ids = np.asarray(item_ids).astype(str)
        self.config = config
        self.info = dict(info or {})
        self._row = {item: r for r, item in enumerate(self.item_ids)}
        if len(self._row) != len(self.item_ids):
            raise ValueError("item_ids contain duplicates")
        _apply_search_params(index, config)

    # -- construction ------------------------------------------------------------------
    @classmethod
    def build(cls, item_ids: Sequence[str], embeddings: np.ndarray, config: IndexConfig = IndexConfig(),
              queries: np.ndarray | None = None) -> ItemIndex:
        """Builds (and, for IVF/PQ, trains) the index over `embeddings` [I, d].

        The recall@N of the result against exact search is measured on `queries` [q, d]
        (default: a seeded sample of the items themselves) and kept in `info`.
        """
        x = _as_matrix(embeddings, "embeddings")
        ids = np.asarray(item_ids).astype(str)
        if len(ids) != len(x):
            raise ValueError(f"{len(ids)} item ids but {len(x)} embeddings; they must match row for row")
        if len(x) == 0:
            raise ValueError("cannot build an index over an empty catalogue")
        if config.threads:
            faiss.omp_set_num_threads(config.threads)
        metric = faiss.METRIC_INNER_PRODUCT if config.metric == "ip" else faiss.METRIC_L2
        try:
            index = faiss.index_factory(x.shape[1], config.factory, metric)
        except RuntimeError as e:
            raise ValueError(f"--factory {config.factory!r} is not a valid faiss.index_factory string: "
                             f"{str(e).strip().splitlines()[-1]}") from e
        rng = np.random.default_rng(config.seed)
        started = time.perf_counter()
        if not index.is_trained:
            sample = x if len(x) <= config.train_size else x[np.sort(rng.choice(len(x), config.train_size, replace=False))]
            try:
                index.train(sample)
            except RuntimeError as e:
                raise ValueError(f"--factory {config.factory!r} could not be trained on {len(sample)} vectors "
                                 f"(too few for its lists/codebooks?): {str(e).strip().splitlines()[-1]}") from e
        index.add(x)
        built = cls(index, ids, config, {"factory": config.factory, "metric": config.metric, "dim": int(x.shape[1]),
                                         "size": int(len(x)), "build_seconds": round(time.perf_counter() - started, 3)})
        if queries is None:
            queries = x[rng.choice(len(x), min(len(x), config.recall_queries), replace=False)]
        elif len(queries) > config.recall_queries:
            queries = queries[rng.choice(len(queries), config.recall_queries, replace=False)]
        if len(queries):
            built.info["recall_at_n"] = built.recall_vs_exact(x, _as_matrix(queries, "queries"), config.recall_n)
            built.info["recall_n"] = config.recall_n
            built.info["recall_queries"] = int(len(queries))
        log.info("index %s: %d × %d built in %.1fs, recall@%d vs exact %.4f", config.factory, len(x), x.shape[1],
                 built.info["build_seconds"], config.recall_n, built.info.get("recall_at_n", float("nan")))
        return built

    def recall_vs_exact(self, embeddings: np.ndarray, queries: np.ndarray, n: int) -> float:
        """Mean |top-n(this index) ∩ top-n(exact)| / n over `queries` (1.0 for an exact index)."""
        n = min(n, len(embeddings))
        exact = faiss.IndexFlatIP(embeddings.shape[1]) if self.config.metric == "ip" else faiss.IndexFlatL2(
            embeddings.shape[1])
        exact.add(np.ascontiguousarray(embeddings, dtype=np.float32))
        _, truth = exact.search(queries, n)
        _, got = self.index.search(queries, n)
        hits = [len(set(t[t >= 0]) & set(g[g >= 0])) for t, g in zip(truth, got)]
        return float(np.mean(hits) / n)

    # -- persistence --------------------------------------------------------------------
    def save(self, directory: str | pathlib.Path) -> None:
        """Writes index.faiss, item_ids.npy and index.json (config + build info) into `directory`."""
        d = pathlib.Path(directory)
        d.mkdir(parents=True, exist_ok=True)
        faiss.write_index(self.index, str(d / INDEX_FILE))
        np.save(d / IDS_FILE, self.item_ids)
        (d / CONFIG_FILE).write_text(json.dumps({"config": dataclasses.asdict(self.config), "info": self.info},
                                                indent=2))

    @classmethod
    def load(cls, directory: str | pathlib.Path) -> ItemIndex:
        """Loads what `save` wrote; ArtifactError if a file is missing or unreadable."""
        d = pathlib.Path(directory)
        for name in (INDEX_FILE, IDS_FILE, CONFIG_FILE):
            if not (d / name).is_file():
                raise ArtifactError(f"FAISS index directory {d} is missing {name}; rebuild it with `recsys index build`")
        try:
            meta = json.loads((d / CONFIG_FILE).read_text())
            config = IndexConfig(**meta["config"])
            item_ids = np.load(d / IDS_FILE, allow_pickle=False)
            index = faiss.read_index(str(d / INDEX_FILE))
        except (OSError, ValueError, KeyError, TypeError, RuntimeError) as e:
            raise ArtifactError(f"cannot load the FAISS index from {d}: {str(e).strip().splitlines()[-1] if str(e) else e!r}") from e
        return cls(index, item_ids, config, meta.get("info", {}))

    # -- queries ------------------------------------------------------------------------
    @property
    def dim(self) -> int:
        return int(self.index.d)

    def __len__(self) -> int:
        return int(self.index.ntotal)

    def __contains__(self, item_id: object) -> bool:
        return str(item_id) in self._row

    def search(self, queries: np.ndarray, n: int,
               exclude: Sequence[Collection[str]] | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Top-n items per query, never returning an item in that query's `exclude` set.

        Args:
          queries: [b, d] float32 (user embeddings).
          n: results per query, >= 1.
          exclude: None or b collections of item ids (e.g. items the user has seen);
            unknown ids in them are ignored.

        Returns:
          (item_ids [b, n] object array, "" where fewer than n items qualify;
           scores [b, n] float32, higher first, -inf in padded slots).
        """
        q = _as_matrix(queries, "queries")
        if q.shape[1] != self.dim:
            raise ValueError(f"queries have dimension {q.shape[1]}, the index {self.dim}")
        if n <= 0:
            raise ValueError(f"n must be >= 1, got {n}")
        if exclude is not None and len(exclude) != len(q):
            raise ValueError(f"exclude has {len(exclude)} entries for {len(q)} queries; give one set per query")
        b = len(q)
        out_ids = np.full((b, n), "", dtype=object)
        out_scores = np.full((b, n), -np.inf, dtype=np.float32)
        if b == 0:
            return out_ids, out_scores
        excluded_rows = [self._rows_of(e) for e in exclude] if exclude is not None else [set()] * b
        # Fetch enough that n remain after dropping each query's excluded rows. Queries are grouped
        # by that need rounded up to a power of two: few FAISS calls per batch, at most 2x the
        # work per query, and a query's fetch size depends on it alone (never on its batch-mates),
        # so results are the same however users are batched.
        need = np.array([min(len(self), _next_power_of_two(n + len(e))) for e in excluded_rows])
        for fetch in np.unique(need):
            sel = np.flatnonzero(need == fetch)
            scores, rows = self.index.search(q[sel], int(fetch))
            if self.config.metric == "l2":
                scores = -scores
            for j, i in enumerate(sel):
                keep = rows[j] >= 0
                if excluded_rows[i]:
                    keep &= ~np.isin(rows[j], np.fromiter(excluded_rows[i], dtype=np.int64))
                kept = np.flatnonzero(keep)[:n]
                out_ids[i, :len(kept)] = self.item_ids[rows[j, kept]]
                out_scores[i, :len(kept)] = scores[j, kept]
        return out_ids, out_scores

    def _rows_of(self, item_ids: Collection[str]) -> set[int]:
        row = self._row
        return {row[str(i)] for i in item_ids if str(i) in row}

    def embedding(self, item_id: str) -> np.ndarray:
        """[d] float32 vector of `item_id` as stored in the index (approximate for PQ/SQ codes)."""
        row = self._row.get(str(item_id))
        if row is None:
            raise UnknownItemError(f"item_id {item_id!r} is not in the index ({len(self)} items)")
        try:
            return self.index.reconstruct(row)
        except RuntimeError:
            ivf = faiss.extract_index_ivf(self.index)
            ivf.make_direct_map()  # IVF indexes need it to look vectors up by row
            return self.index.reconstruct(row)

    def similar_items(self, item_id: str, k: int) -> tuple[np.ndarray, np.ndarray]:
        """The k nearest items to `item_id`'s own vector, excluding itself: (ids [k], scores [k])."""
        vector = self.embedding(item_id)[None, :]
        ids, scores = self.search(vector, k, exclude=[{str(item_id)}])
        return ids[0], scores[0]


def _apply_search_params(index: faiss.Index, config: IndexConfig) -> None:
    """Sets nprobe / efSearch on whichever sub-index has them (no-op for Flat)."""
    params = faiss.ParameterSpace()
    for name, value in (("nprobe", config.nprobe), ("efSearch", config.ef_search)):
        try:
            params.set_index_parameter(index, name, value)
        except RuntimeError:
            pass  # this index kind has no such parameter


def _as_matrix(x: np.ndarray, what: str) -> np.ndarray:
    x = np.ascontiguousarray(x, dtype=np.float32)
    if x.ndim != 2:
        raise ValueError(f"{what} must be a 2-D [n, dim] array, got shape {x.shape}")
    if not np.isfinite(x).all():
        raise ValueError(f"{what} contain NaN or infinite values")
    return x


def _next_power_of_two(x: int) -> int:
    return 1 << max(0, int(x) - 1).bit_length()
