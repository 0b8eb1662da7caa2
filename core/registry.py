"""Versioned artifact directories and the registry pointer (DESIGN.md §5).

Layout under an artifacts root:

  <root>/<version>/manifest.json   config, data, metrics, sizes, and a sha256 per file
  <root>/<version>/...             stage outputs (features/, retrieval/, index/, ranking/)
  <root>/CURRENT                   the serving version's name; replaced atomically

A version directory is written once (`start_version` refuses an existing one) and sealed by
`finalize_version`, which records every file's checksum. `verify_version` recomputes them,
so a loader refuses a directory that was changed or corrupted after training.
"""
from __future__ import annotations

import contextlib
import datetime as _dt
import hashlib
import json
import os
import pathlib
import re
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from typing import Any

from core.errors import ArtifactError, ArtifactMismatchError

MANIFEST = "manifest.json"
POINTER = "CURRENT"
_VERSION_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
DEFAULT_ROOT_ENV = "RECSYS_ARTIFACTS"


def default_root() -> pathlib.Path:
    """$RECSYS_ARTIFACTS, else ./artifacts."""
    return pathlib.Path(os.environ.get(DEFAULT_ROOT_ENV, "artifacts"))


def new_version_name(now: _dt.datetime | None = None) -> str:
    """A sortable, unique-enough version name: v20261123-091500-<6 hex>."""
    now = now or _dt.datetime.now(_dt.timezone.utc)
    return now.strftime("v%Y%m%d-%H%M%S-") + os.urandom(3).hex()


def start_version(root: str | os.PathLike, version: str | None = None) -> pathlib.Path:
    """Creates `<root>/<version>/` (never overwriting one) and returns it."""
    version = version or new_version_name()
    if not _VERSION_RE.match(version):
        raise ArtifactError(f"--version {version!r}: use letters, digits, '.', '_' or '-' (max 128)")
    path = pathlib.Path(root) / version
    if path.exists():
        raise ArtifactError(f"version directory {path} already exists; versions are never overwritten")
    path.mkdir(parents=True)
    return path


@contextlib.contextmanager
def writing_version(root: str | os.PathLike, version: str | None = None) -> Iterator[pathlib.Path]:
    """`start_version`, yielding the new directory; if the body raises, the directory is removed
    again, so an unfinished (unsealed, unservable) version never stays behind and the same name
    can be retried. The body seals it with `finalize_version`."""
    path = start_version(root, version)
    try:
        yield path
    except BaseException:
        shutil.rmtree(path, ignore_errors=True)
        raise


def _sha256(path: pathlib.Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def file_checksums(version_dir: pathlib.Path) -> dict[str, str]:
    """sha256 of every file under `version_dir` except the manifest, by relative path."""
    return {str(p.relative_to(version_dir)): _sha256(p)
            for p in sorted(version_dir.rglob("*")) if p.is_file() and p.name != MANIFEST}


def git_sha() -> str:
    try:
        return subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5,
                              cwd=pathlib.Path(__file__).parent).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return ""


def finalize_version(version_dir: str | os.PathLike, manifest: dict[str, Any]) -> dict[str, Any]:
    """Writes manifest.json with checksums of everything in the directory; returns it."""
    d = pathlib.Path(version_dir)
    full = {"version": d.name, "created": _dt.datetime.now(_dt.timezone.utc).isoformat(), "git_sha": git_sha(),
            **manifest, "checksums": file_checksums(d)}
    _atomic_write(d / MANIFEST, json.dumps(full, indent=2, default=str))
    return full


def read_manifest(version_dir: str | os.PathLike) -> dict[str, Any]:
    path = pathlib.Path(version_dir) / MANIFEST
    try:
        return json.loads(path.read_text())
    except FileNotFoundError as e:
        raise ArtifactError(f"{path} not found: is {path.parent} a finished training run?") from e
    except (OSError, ValueError) as e:
        raise ArtifactError(f"{path} is unreadable: {e}") from e


def verify_version(version_dir: str | os.PathLike) -> dict[str, Any]:
    """Recomputes every checksum; raises ArtifactMismatchError naming the files that differ."""
    d = pathlib.Path(version_dir)
    manifest = read_manifest(d)
    expected = manifest.get("checksums", {})
    actual = file_checksums(d)
    missing = sorted(set(expected) - set(actual))
    changed = sorted(k for k in expected if k in actual and actual[k] != expected[k])
    if missing or changed:
        raise ArtifactMismatchError(
            f"version {d.name} failed verification: missing {missing[:5]}, changed {changed[:5]}; "
            "retrain or restore the directory")
    return manifest


def promote(root: str | os.PathLike, version: str) -> pathlib.Path:
    """Points CURRENT at `version` atomically (write a temp file, then rename over)."""
    root = pathlib.Path(root)
    target = root / version
    verify_version(target)
    _atomic_write(root / POINTER, version + "\n")
    return target


def current_version(root: str | os.PathLike) -> str:
    pointer = pathlib.Path(root) / POINTER
    try:
        return pointer.read_text().strip()
    except FileNotFoundError as e:
        raise ArtifactError(f"no {POINTER} pointer in {root}: run `recsys train` (it promotes its version) "
                            "or `recsys promote VERSION`") from e


def resolve_version(root: str | os.PathLike, version: str = "current") -> pathlib.Path:
    """The directory of `version` ('current' follows the pointer; a path is taken as is)."""
    if version in ("", "current"):
        version = current_version(root)
    p = pathlib.Path(version)
    d = p if (p.is_absolute() or p.exists()) and (p / MANIFEST).exists() else pathlib.Path(root) / version
    if not (d / MANIFEST).exists():
        raise ArtifactError(f"version {version!r} not found under {root} (no {MANIFEST})")
    return d


def list_versions(root: str | os.PathLike) -> list[str]:
    root = pathlib.Path(root)
    return sorted(p.name for p in root.iterdir() if (p / MANIFEST).exists()) if root.exists() else []


def _atomic_write(path: pathlib.Path, text: str) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def amend_manifest(version_dir: str | os.PathLike, updates: dict[str, Any]) -> dict[str, Any]:
    """Adds/replaces top-level sections of a sealed version's manifest (atomic rewrite); the file
    checksums stay as sealed, so `verify_version` still passes. Returns the new manifest."""
    d = pathlib.Path(version_dir)
    manifest = {**read_manifest(d), **updates}
    _atomic_write(d / MANIFEST, json.dumps(manifest, indent=2, default=str))
    return manifest


# -- staging: versions built out of sight, then renamed in whole ---------------------------------
STAGING_DIR = ".staging"  # <root>/.staging/<run>/: a run's artifacts root until its version is moved in


def staging_root(root: str | os.PathLike) -> pathlib.Path:
    """A fresh private directory under <root>/.staging/ to build a version in (not listed as a version:
    `list_versions` only sees <root>/<name>/manifest.json)."""
    base = pathlib.Path(root) / STAGING_DIR
    base.mkdir(parents=True, exist_ok=True)
    return pathlib.Path(tempfile.mkdtemp(dir=base, prefix="run-"))


def publish_version(staged_dir: str | os.PathLike, root: str | os.PathLike) -> pathlib.Path:
    """Moves a sealed version directory from staging to <root>/<name> with one rename (atomic on one
    filesystem): a reader sees no version or the whole one, never a partial directory."""
    staged = pathlib.Path(staged_dir)
    read_manifest(staged)  # sealed
    target = pathlib.Path(root) / staged.name
    if target.exists():
        raise ArtifactError(f"version directory {target} already exists; versions are never overwritten")
    os.rename(staged, target)
    return target


def clear_staging(root: str | os.PathLike) -> list[str]:
    """Removes every leftover run under <root>/.staging (a crashed or killed run's). Call it only while
    holding `exclusive_lock(root)`, so no live run's staging is removed. Returns what was removed."""
    base = pathlib.Path(root) / STAGING_DIR
    removed = []
    if base.is_dir():
        for p in sorted(base.iterdir()):
            shutil.rmtree(p, ignore_errors=True)
            removed.append(p.name)
    return removed


LOCK_FILE = ".retrain.lock"


class LockHeldError(ArtifactError):
    """Another process holds the artifacts root's lock."""


@contextlib.contextmanager
def exclusive_lock(root: str | os.PathLike, name: str = LOCK_FILE, what: str = "retrain") -> Iterator[pathlib.Path]:
    """An exclusive, non-blocking `fcntl.flock` on <root>/<name>, held for the body. The kernel drops it
    when the process dies (even kill -9), so a crash never leaves a stale lock. Raises LockHeldError
    naming the holder's pid when another process holds it."""
    import fcntl

    root = pathlib.Path(root)
    root.mkdir(parents=True, exist_ok=True)
    path = root / name
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = ""
            with contextlib.suppress(OSError, ValueError):
                holder = os.pread(fd, 200, 0).decode().strip()
            raise LockHeldError(f"another {what} is running on {root} (lock {path} held{' by ' + holder if holder else ''}); "
                                "this one exits without doing anything — try again when it has finished") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"pid {os.getpid()} since {_dt.datetime.now(_dt.timezone.utc).isoformat(timespec='seconds')}"
                  .encode(), 0)
        yield path
    finally:
        os.close(fd)  # closing the descriptor releases the flock


# -- retention ----------------------------------------------------------------------------------
def experiment_file(root: str | os.PathLike) -> pathlib.Path | None:
    """The experiment file of the artifacts root (core/experiment.py), if one exists (None otherwise)."""
    from core.experiment import experiment_file as path_of

    path = path_of(root)
    return path if path.is_file() else None


def experiment_versions(root: str | os.PathLike) -> set[str]:
    """Every version the running experiment names (arms and shadow; "current" is CURRENT itself).
    Unreadable or invalid file → ArtifactError (retention must not guess which versions are safe to delete)."""
    from core.experiment import ExperimentConfigError, read_experiment

    path = experiment_file(root)
    if path is None:
        return set()
    try:
        experiment = read_experiment(path)
    except ExperimentConfigError as e:
        raise ArtifactError(f"{e}; fix it before garbage-collecting versions") from e
    return {v for v in (experiment.versions if experiment else ()) if v != "current"}


def gc_versions(root: str | os.PathLike, keep: int, dry_run: bool = False) -> dict[str, list[str]]:
    """Deletes all but the newest `keep` versions (by manifest creation time), never CURRENT nor a
    version an experiments config names. Returns {"deleted": [...], "kept": [...], "protected": [...]}.

    Each deletion renames the directory into staging first (one atomic step: it stops being a version)
    and then removes it, so a crash mid-delete leaves no half-deleted version."""
    if keep < 0:
        raise ArtifactError(f"--keep must be >= 0, got {keep}")
    root = pathlib.Path(root)
    names = list_versions(root)
    protected = set(experiment_versions(root))
    with contextlib.suppress(ArtifactError):
        protected.add(current_version(root))

    def created(name: str) -> str:
        try:
            return str(read_manifest(root / name).get("created", ""))
        except ArtifactError:
            return ""
    newest_first = sorted(names, key=lambda n: (created(n), n), reverse=True)
    kept = newest_first[:keep]
    doomed = [n for n in newest_first[keep:] if n not in protected]
    if not dry_run:
        for name in doomed:
            trash = staging_root(root) / name
            os.rename(root / name, trash)
            shutil.rmtree(trash.parent, ignore_errors=True)
    return {"deleted": sorted(doomed), "kept": sorted(kept),
            "protected": sorted(p for p in protected if p in names)}
