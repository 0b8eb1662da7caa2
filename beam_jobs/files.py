"""Paths and URLs of the batch job, through Beam's FileSystems: a version, --users and --output may be local
paths, file:// URLs or any scheme Beam has a filesystem for (gs:// with apache-beam[gcp], s3:// with
apache-beam[aws], ...), so workers on other machines can read a version and write the output.

Beam's FileSystems has no file:// scheme: `resolve_url` turns one into its local path. A version
directory given by a remote URL is copied once per process into a local temp dir (`local_version`):
TensorFlow SavedModels and the FAISS index load from local files.
"""
from __future__ import annotations

import logging
import pathlib
import shutil
import tempfile
import threading
import urllib.parse

from core import registry
from core.errors import ArtifactError, DataError

log = logging.getLogger(__name__)

# scheme → the pip extra that brings Beam's filesystem for it
EXTRAS = {"gs": "apache-beam[gcp]", "s3": "apache-beam[aws]", "azfs": "apache-beam[azure]",
          "hdfs": "apache-beam[hadoop]"}
_STAGED: dict[str, pathlib.Path] = {}
_LOCK = threading.Lock()


def is_remote(path: str) -> bool:
    """True for a URL other than file:// (after resolve_url, every file:// URL is a path)."""
    return "://" in str(path)


def resolve_url(flag: str, value: str) -> str:
    """`value` of `flag` as FileSystems and local readers take it: "" and paths unchanged, a file:// URL → its
    local path, another URL checked to have a Beam filesystem installed.

    Raises:
      DataError naming the flag for a file:// URL with a host, or a scheme no installed filesystem serves.
    """
    value = str(value)
    if not value or "://" not in value:
        return value
    parsed = urllib.parse.urlparse(value)
    if parsed.scheme == "file":
        if parsed.netloc not in ("", "localhost"):
            raise DataError(f"{flag} {value}: a file:// URL names a path on this machine (file:///abs/path), "
                            f"not on host {parsed.netloc!r}")
        return urllib.parse.unquote(parsed.path)
    from apache_beam.io.filesystem import BeamIOError
    from apache_beam.io.filesystems import FileSystems

    try:
        FileSystems.get_filesystem(value)
    except (ValueError, ImportError, BeamIOError):
        extra = EXTRAS.get(parsed.scheme)
        hint = f"pip install '{extra}'" if extra else "install the Beam filesystem for it"
        raise DataError(f"{flag} {value}: no Beam filesystem for {parsed.scheme}:// is installed ({hint}), "
                        "or give a local path or file:// URL") from None
    return value


def resolve_version(root: str, version: str) -> str:
    """The version directory (a local path, or a URL under a remote --artifacts root) that `version` names:
    a name under `root`, 'current' (root's CURRENT pointer) or a version directory itself."""
    if not is_remote(root) and not is_remote(version):
        return str(registry.resolve_version(root, version).resolve())
    from apache_beam.io.filesystems import FileSystems

    if version in ("", "current"):
        pointer = root.rstrip("/") + "/" + registry.POINTER
        if not FileSystems.exists(pointer):
            raise ArtifactError(f"--artifacts {root}: no {registry.POINTER} pointer; pass --version NAME")
        with FileSystems.open(pointer) as f:
            version = f.read().decode().strip()
    url = version if is_remote(version) else root.rstrip("/") + "/" + version
    if not FileSystems.exists(url.rstrip("/") + "/" + registry.MANIFEST):
        raise ArtifactError(f"version {version!r} not found under {root} (no {registry.MANIFEST})")
    return url.rstrip("/")


def local_version(version_dir: str) -> pathlib.Path:
    """A local directory holding `version_dir`: itself when local; a remote one copied once per process."""
    if not is_remote(version_dir):
        return pathlib.Path(version_dir)
    with _LOCK:
        if version_dir not in _STAGED:
            _STAGED[version_dir] = _stage(version_dir)
        return _STAGED[version_dir]


def _stage(url: str) -> pathlib.Path:
    from apache_beam.io.filesystem import CompressionTypes
    from apache_beam.io.filesystems import FileSystems

    base = url.rstrip("/") + "/"
    dest = pathlib.Path(tempfile.mkdtemp(prefix="recsys-version-")) / base.rstrip("/").rsplit("/", 1)[-1]
    files = [m for r in FileSystems.match([base + "**"]) for m in r.metadata_list]
    if not files:
        raise ArtifactError(f"version {url}: no files found")
    for m in files:
        target = dest / m.path[len(base):]
        target.parent.mkdir(parents=True, exist_ok=True)
        with FileSystems.open(m.path, compression_type=CompressionTypes.UNCOMPRESSED) as src, \
                open(target, "wb") as out:
            shutil.copyfileobj(src, out, 1 << 20)
    log.info("staged version %s: %d files into %s", url, len(files), dest)
    return dest
