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
