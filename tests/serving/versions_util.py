"""Test helpers for issue 8: registries of copied versions, corrupted and out-of-step versions, a server starter."""
from __future__ import annotations

import contextlib
import pathlib
import shutil
import threading
import time

import grpc
import numpy as np

from core import registry
from protos.recsys.v1 import recommender_pb2 as pb
from protos.recsys.v1 import recommender_pb2_grpc as pb_grpc

_SEALED_FIELDS = ("checksums", "version", "created", "git_sha")


def copy_version(source: pathlib.Path, root: pathlib.Path, name: str) -> pathlib.Path:
    """A new sealed version `name` under `root` with `source`'s artifacts (a stand-in for a retrain).

    The model version is the directory name, so the copy is a distinct version to the
    server (own cache namespace, own metrics label) with the same weights.
    """
    target = root / name
    shutil.copytree(source, target)
    reseal(target)
    return target


def reseal(version_dir: pathlib.Path) -> None:
    """Re-runs finalize_version: checksums match the files again (as a buggy pipeline would leave them)."""
    manifest = {k: v for k, v in registry.read_manifest(version_dir).items() if k not in _SEALED_FIELDS}
    registry.finalize_version(version_dir, manifest)


def flip_byte(path: pathlib.Path, offset: int | None = None) -> None:
    """Corrupts one byte in place (after the manifest was sealed), like a bad disk or a partial copy."""
    data = bytearray(path.read_bytes())
    i = len(data) // 2 if offset is None else offset
    data[i] ^= 0xFF
    path.write_bytes(bytes(data))


def point_current(root: pathlib.Path, name: str) -> None:
    """Writes CURRENT directly, bypassing `recsys promote`'s verification (an operator or tool error)."""
    tmp = root / ".CURRENT.tmp"
    tmp.write_text(name + "\n")
    tmp.replace(root / registry.POINTER)


def rebuild_index(version_dir: pathlib.Path, mode: str) -> None:
    """Rebuilds the version's FAISS index out of step with items.npz, then reseals the manifest.

    mode "drop_last": the index lacks the last item; "shuffled": same ids, rows built from
    permuted embeddings (each id points at another item's vector).
    """
    from retrieval import ItemIndex, load_items

    index_dir = version_dir / "index"
    index = ItemIndex.load(index_dir)
    ids, emb = load_items(version_dir)
    if mode == "drop_last":
        ids, emb = ids[:-1], emb[:-1]
    elif mode == "shuffled":
        emb = emb[np.random.default_rng(0).permutation(len(emb))]
    else:
        raise ValueError(mode)
    shutil.rmtree(index_dir)
    ItemIndex.build(ids, emb, index.config).save(index_dir)
    reseal(version_dir)


def wait_for(predicate, timeout: float = 60.0, interval: float = 0.05, what: str = "condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


class ClientLoop:
    """Clients calling Recommend in a loop on their own channels; records every outcome.

    Each record is (client, t_monotonic, code_name, model_version, source).
    """

    def __init__(self, target: str, users: list[str], clients: int = 3, k: int = 10, timeout: float = 10.0,
                 channel_factory=None) -> None:
        self.target = target
        self.users = users
        self.k = k
        self.timeout = timeout
        self.records: list[tuple[int, float, str, str, int]] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._factory = channel_factory or grpc.insecure_channel
        self._threads = [threading.Thread(target=self._run, args=(c,), daemon=True) for c in range(clients)]

    def _run(self, client: int) -> None:
        with self._factory(self.target) as channel:
            stub = pb_grpc.RecommenderStub(channel)
            i = client
            while not self._stop.is_set():
                user = self.users[i % len(self.users)]
                i += 1
                try:
                    r = stub.Recommend(pb.RecommendRequest(user_id=user, num_results=self.k), timeout=self.timeout)
                    record = (client, time.monotonic(), "OK", r.model_version, r.source)
                except grpc.RpcError as e:
                    record = (client, time.monotonic(), e.code().name, "", -1)
                with self._lock:
                    self.records.append(record)

    def versions(self) -> set[str]:
        with self._lock:
            return {r[3] for r in self.records if r[2] == "OK"}

    def failures(self) -> list[tuple]:
        with self._lock:
            return [r for r in self.records if r[2] != "OK"]

    def __enter__(self) -> ClientLoop:
        for t in self._threads:
            t.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(30)


@contextlib.contextmanager
def started(server):
    """Starts a RecommendServer and always stops it."""
    server.start()
    try:
        yield server
    finally:
        server.stop(grace=0)
