"""Model versions in production: load a version safely and swap to it without dropping a request.

A version is served only after `load_checked` passed: manifest checksums verified, the
pipeline built, its artifacts checked against each other (`check_consistency`) and a few
Recommend computations run on it (`warm_up`). Any failure is an ArtifactError naming the
reason; the caller keeps serving the old version.

`RegistryWatcher` polls the registry pointer (`CURRENT`, via a resolve callable) every
`HotSwapConfig.watch_interval_s` and, when it names another version, loads that version
in its own thread and then swaps the servicer's model reference (one assignment; a
request in flight keeps the model it started with). SIGHUP (serving.server.serve) goes
through the same `load_checked`. A refused version is not retried until the pointer
names another version or its manifest changes.

This module knows nothing of the server: `load_into` and `RegistryWatcher` take the
`set_model` / `served_version` callables and the ServingMetrics they need (the server
imports this module, never the other way round).

Observability: `recsys_model_loads_total{result=ok|refused}`,
`recsys_model_load_seconds` (last successful load, incl. verify + warm-up),
`recsys_model_info{version}` (ServingMetrics) and every response's `model_version`.
Cache keys carry the version (serving/cache.py), so after a swap the old version's
entries are never read again; they expire with their TTL.
"""
from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import pathlib
import sys
import threading
import time
import weakref
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Literal

import numpy as np

from core import layout, registry
from core.errors import ArtifactError, ArtifactMismatchError, RecsysError
from core.registry import verify_version

if TYPE_CHECKING:
    from serving.metrics import ServingMetrics

log = logging.getLogger(__name__)

# FAISS factory components whose stored vectors are approximations: reconstruction is not exact.
_LOSSY_CODES = ("PQ", "SQ", "LSH", "RQ", "LSQ")


@dataclasses.dataclass(frozen=True)
class HotSwapConfig:
    """How a running server follows the registry pointer; every field is a `recsys serve` flag.

    watch_interval_s: poll the pointer this often; 0 = never (SIGHUP still reloads).
    warmup_users: known users whose Recommend is computed on a new version before it
      serves (plus one unknown user and one SimilarItems); 0 = no warm-up.
    load_switch_interval_s: Python's GIL switch interval while a version loads in the
      background (restored afterwards); 0 = leave it. Loading a SavedModel is long
      stretches of Python holding the GIL; at the default 5 ms a request thread waits up to
      5 ms per GIL hand-off behind the loader, which is what a swap adds to tail latency.
    """

    watch_interval_s: float = 2.0
    warmup_users: int = 4
    load_switch_interval_s: float = 0.0005
    # in_process: the serving process loads the new version beside the old one and switches a
    # reference (no request fails, but TensorFlow's loader stalls the process's other threads
    # for up to ~150 ms at a time). blue_green: new server processes load the new version
    # without listening, then bind the same port, and the old ones drain and exit
    # (serving/processes.py) — the swap costs no GIL time in a serving process.
    swap_mode: Literal["in_process", "blue_green"] = "in_process"

    def __post_init__(self) -> None:
        if self.watch_interval_s < 0:
            raise ValueError(f"--watch-interval-s must be >= 0 (0 = off), got {self.watch_interval_s}")
        if self.warmup_users < 0:
            raise ValueError(f"--warmup-users must be >= 0, got {self.warmup_users}")
        if self.load_switch_interval_s < 0:
            raise ValueError(f"--load-switch-interval-s must be >= 0, got {self.load_switch_interval_s}")
        if self.swap_mode not in ("in_process", "blue_green"):
            raise ValueError(f"--swap-mode must be in_process or blue_green, got {self.swap_mode!r}")


# -- checks ---------------------------------------------------------------------------------
def check_consistency(version_dir: str | os.PathLike, model: Any = None) -> None:
    """Raises ArtifactMismatchError unless the version's retrieval artifacts agree with each other.

    Checks: the FAISS id map equals items.npz's ids row for row (so index row r is the
    item whose embedding is items.npz row r); index and items.npz dimensions are equal
    (and the user tower's, when `model` is given); for indexes that store exact vectors, a
    sample of reconstructed index rows equals the items.npz embeddings (catches an index
    built from other embeddings); every indexed item has a row in the feature store, whose
    vocabularies the ranker was built on. Without `model` it reads only the index, items.npz
    and the feature store, so a bad version is refused before TensorFlow loads anything.

    Args:
      version_dir: the version directory.
      model: optional loaded RecommendPipeline (features, tower, index) of that directory.
    """
    from features import FeatureStore
    from retrieval import ItemIndex, load_items

    d = pathlib.Path(version_dir)
    item_ids, embeddings = load_items(d)
    index = model.index if model is not None else ItemIndex.load(layout.index_dir(d))
    ntotal = int(index.index.ntotal)
    if ntotal != len(item_ids):
        raise ArtifactMismatchError(f"version {d.name}: the FAISS index holds {ntotal} items but "
                                    f"retrieval/items.npz has {len(item_ids)}; rebuild the index from this "
                                    "version's items.npz (`recsys index build`)")
    differ = np.flatnonzero(np.asarray(index.item_ids) != item_ids)
    if len(differ):
        r = int(differ[0])
        raise ArtifactMismatchError(f"version {d.name}: FAISS row {r} is item {index.item_ids[r]!r} but "
                                    f"items.npz row {r} is {item_ids[r]!r} ({len(differ)} rows differ); rebuild "
                                    "the index from this version's items.npz")
    dims = {"index": index.dim, "items.npz": int(embeddings.shape[1])}
    if model is not None:
        dims["user tower"] = int(model.tower.dim)
    if len(set(dims.values())) != 1:
        raise ArtifactMismatchError(f"version {d.name}: embedding dimensions disagree {dims}")
    factory = str(index.config.factory) if getattr(index, "config", None) is not None else ""
    if ntotal and not any(code in factory for code in _LOSSY_CODES):
        rows = np.unique(np.linspace(0, ntotal - 1, min(ntotal, 64)).astype(np.int64))
        stored = _reconstruct(index.index, rows)
        if stored is not None:
            expected = embeddings[rows]
            err = np.linalg.norm(stored - expected, axis=1) / np.maximum(np.linalg.norm(expected, axis=1), 1e-12)
            if float(err.max()) > 1e-3:
                r = int(rows[int(np.argmax(err))])
                raise ArtifactMismatchError(
                    f"version {d.name}: FAISS row {r} ({item_ids[r]!r}) does not hold items.npz's embedding "
                    f"(relative error {float(err.max()):.3g}); the index was built from other embeddings — rebuild it")
    features = model.features if model is not None else FeatureStore.load(layout.features_dir(d))
    known = features.items.index
    missing = [i for i in item_ids[:100_000] if i not in known]
    if missing:
        raise ArtifactMismatchError(f"version {d.name}: {len(missing)} indexed items (e.g. {missing[:3]}) have no "
                                    "row in the feature store; the index and features come from different runs")


def _reconstruct(faiss_index: Any, rows: np.ndarray) -> np.ndarray | None:
    """Stored vectors of `rows`, or None when this index type cannot reconstruct."""
    try:
        return np.stack([faiss_index.reconstruct(int(r)) for r in rows]).astype(np.float32)
    except RuntimeError:  # e.g. IVF without a direct map
        return None


def warm_up(model: Any, num_users: int = 4, k: int = 10) -> None:
    """Runs a few Recommend computations on `model` so the first real requests pay no tracing cost.

    Known users (the first `num_users` of the user vocabulary) go through candidates →
    blend_top_k; one unknown user through the popularity fallback; one SimilarItems.
    Raises ArtifactMismatchError when the version answers nothing or non-finite scores.
    """
    if num_users <= 0:
        return
    users = list(model.features.vocabularies["user_id"].tokens[:num_users])
    if users:
        for cands in model.candidates(users):
            for name in ("retrieval_scores", "engagement", "quality"):
                values = getattr(cands, name)
                if not np.all(np.isfinite(values)):
                    raise ArtifactMismatchError(f"version {model.model_version}: warm-up produced non-finite "
                                                f"{name}; the ranker or towers are broken")
            model.blend_top_k(cands, model.default_weights, k)
    ids, _ = model.popular_items(k)
    model.is_known_user("\x00warm-up-unknown-user")
    if len(ids):
        model.index.similar_items(str(ids[0]), k)


def load_checked(version_dir: str | os.PathLike, verify: bool = True, warmup_users: int = 4) -> Any:
    """A RecommendPipeline for `version_dir` that passed verification, consistency checks and warm-up.

    Raises:
      ArtifactError (or a subclass) naming what failed; anything unexpected from the
      loaders (TensorFlow, FAISS) is wrapped in ArtifactError as well.
    """
    from pipeline import RecommendPipeline  # TensorFlow loads here, not at import

    d = pathlib.Path(version_dir)
    try:
        if verify:
            verify_version(d)  # before anything is parsed: a corrupt file is refused, not half-loaded
        check_consistency(d)  # index ↔ items.npz ↔ features, before TensorFlow loads the towers
        model = RecommendPipeline.from_version_dir(d, verify=False)  # checks tower dim == index dim
        warm_up(model, warmup_users)
    except RecsysError:
        raise
    except Exception as e:  # a loader's own error type for a broken file; never let it kill the server
        raise ArtifactError(f"version {d.name} could not be loaded: {type(e).__name__}: {str(e)[:300]}") from e
    return model


# -- metrics -------------------------------------------------------------------------------
class SwapMetrics:
    """Load/swap counters registered once in a server's metrics registry."""

    _by_metrics: weakref.WeakKeyDictionary[Any, SwapMetrics] = weakref.WeakKeyDictionary()
    _guard = threading.Lock()

    def __init__(self, metrics: ServingMetrics | Any) -> None:
        """`metrics`: a ServingMetrics, or a bare CollectorRegistry (the blue/green supervisor's)."""
        from prometheus_client import Counter, Gauge

        registry = getattr(metrics, "registry", metrics)
        self.loads = Counter("recsys_model_loads", "Model version loads by result (ok, refused)", ["result"],
                             registry=registry)
        self.load_seconds = Gauge("recsys_model_load_seconds",
                                  "Seconds the last successful load took (verify + build + checks + warm-up)",
                                  registry=registry)
        self.refused_version = Gauge("recsys_model_refused_info",
                                     "1 for the last version refused; cleared when a version is swapped in",
                                     ["version"], registry=registry)

    def refused(self, version: str) -> None:
        """Counts a refused version and names it in recsys_model_refused_info."""
        self.loads.labels("refused").inc()
        self.refused_version.clear()
        self.refused_version.labels(version).set(1)

    def loaded(self, seconds: float) -> None:
        """Counts a successful swap; the refused version (if any) is no longer current news. Counted last, so
        whoever sees the count move sees the rest of the swap's bookkeeping done."""
        self.refused_version.clear()
        self.load_seconds.set(seconds)
        self.loads.labels("ok").inc()

    @classmethod
    def of(cls, metrics: ServingMetrics) -> SwapMetrics:
        with cls._guard:
            found = cls._by_metrics.get(metrics)
            if found is None:
                found = cls._by_metrics[metrics] = cls(metrics)
            return found


@contextlib.contextmanager
def _gil_switch_interval(seconds: float):
    """Temporarily sets sys.setswitchinterval (process-wide; 0 = unchanged)."""
    if seconds <= 0:
        yield
        return
    with _SWITCH_LOCK:
        previous = sys.getswitchinterval()
        sys.setswitchinterval(min(previous, seconds))
        try:
            yield
        finally:
            sys.setswitchinterval(previous)


_SWITCH_LOCK = threading.Lock()


def load_into(set_model: Callable[[Any], None], metrics: ServingMetrics, version_dir: str | os.PathLike,
              verify: bool = True, warmup_users: int = 4, switch_interval_s: float = 0.0) -> Any:
    """load_checked, then `set_model(result)`; counts (in `metrics`) and logs either outcome.

    Args:
      set_model: serves the loaded RecommendPipeline (e.g. RecommendServer.set_model).
      metrics: the server's ServingMetrics, where SwapMetrics registers its counters.
      switch_interval_s: > 0 shortens the GIL switch interval while loading (HotSwapConfig).

    On failure `set_model` is not called (the current model keeps serving) and the
    ArtifactError is re-raised.
    """
    d = pathlib.Path(version_dir)
    swaps = SwapMetrics.of(metrics)
    start = time.monotonic()
    log.info("loading version %s", d.name, extra={"event": "model_load_start", "model_version": d.name})
    try:
        with _gil_switch_interval(switch_interval_s):
            model = load_checked(d, verify=verify, warmup_users=warmup_users)
    except ArtifactError as e:
        # Logged before it is counted: whoever sees the counter move can read the reason.
        log.error("refused version %s: %s", d.name, e,
                  extra={"event": "model_refused", "model_version": d.name, "reason": str(e)})
        swaps.refused(d.name)
        raise
    seconds = time.monotonic() - start
    set_model(model)
    swaps.loaded(seconds)
    log.info("swapped to version %s (loaded, checked and warmed in %.1fs)", d.name, seconds,
             extra={"event": "model_swapped", "model_version": d.name, "load_seconds": round(seconds, 3)})
    return model


# -- the watcher -----------------------------------------------------------------------------
class RegistryWatcher:
    """Follows the registry pointer: on a change, loads the named version in the background and swaps.

    Args:
      resolve: returns the version directory that should be served (e.g. the CURRENT
        pointer resolved by core.registry.resolve_version); may raise RecsysError.
      set_model: serves a loaded RecommendPipeline (e.g. RecommendServer.set_model).
      served_version: the name of the version serving now, "" before the first load.
      metrics: the server's ServingMetrics (load/refusal counters, see SwapMetrics).
      config: HotSwapConfig (poll interval, warm-up size).
      verify: verify manifest checksums before serving a version.
    """

    def __init__(self, resolve: Callable[[], pathlib.Path], *, set_model: Callable[[Any], None],
                 served_version: Callable[[], str], metrics: ServingMetrics,
                 config: HotSwapConfig = HotSwapConfig(), verify: bool = True) -> None:
        self.resolve = resolve
        self.set_model = set_model
        self._served_version = served_version
        self.metrics = metrics
        self.config = config
        self.verify = verify
        self._lock = threading.Lock()  # one load at a time (poll and SIGHUP)
        self._refused: dict[str, float] = {}  # version name → manifest mtime when refused
        self._last_error = ""
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def served_version(self) -> str:
        """The name of the version serving now ("" before the first load)."""
        return self._served_version()

    def check(self, force: bool = False) -> bool:
        """Loads and swaps to the resolved version if it differs from the served one.

        Returns True when a new version now serves; False when nothing changed or the
        version was refused (the old one keeps serving). `force` reloads even the same
        name and retries a refused one (SIGHUP).
        """
        with self._lock:
            try:
                target = pathlib.Path(self.resolve())
            except RecsysError as e:
                if str(e) != self._last_error:
                    log.warning("cannot resolve the version to serve: %s; keeping %s", e, self.served_version() or
                                "nothing", extra={"event": "resolve_failed"})
                    self._last_error = str(e)
                return False
            self._last_error = ""
            if not force and target.name == self.served_version():
                return False
            stamp = _manifest_mtime(target)
            if not force and self._refused.get(target.name) == stamp:
                return False
            try:
                load_into(self.set_model, self.metrics, target, verify=self.verify,
                          warmup_users=self.config.warmup_users, switch_interval_s=self.config.load_switch_interval_s)
            except ArtifactError:
                self._refused[target.name] = stamp
                return False
            self._refused.pop(target.name, None)
            return True

    def start(self) -> RegistryWatcher:
        """Starts polling every watch_interval_s in a daemon thread (no-op when the interval is 0)."""
        if self.config.watch_interval_s > 0 and self._thread is None:
            self._thread = threading.Thread(target=self._run, name="registry-watcher", daemon=True)
            self._thread.start()
        return self

    def _run(self) -> None:
        while not self._stop.wait(self.config.watch_interval_s):
            if not self.served_version():
                continue  # the initial load is still running (serve() owns it)
            try:
                self.check()
            except Exception:  # the watcher must outlive any surprise; the old model keeps serving
                log.exception("registry watcher failed; will retry", extra={"event": "watcher_error"})

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=max(1.0, 2 * self.config.watch_interval_s))
            self._thread = None


def _manifest_mtime(version_dir: pathlib.Path) -> float:
    try:
        return (version_dir / registry.MANIFEST).stat().st_mtime
    except OSError:
        return -1.0


__all__ = ["HotSwapConfig", "RegistryWatcher", "SwapMetrics", "check_consistency", "load_checked", "load_into",
           "warm_up"]
