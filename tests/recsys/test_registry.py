import pytest

from core import registry
from core.errors import ArtifactError, ArtifactMismatchError


def _make_version(root, name="v1"):
    d = registry.start_version(root, name)
    (d / "retrieval").mkdir()
    (d / "retrieval" / "items.npz").write_bytes(b"embeddings")
    registry.finalize_version(d, {"data": {"source": "test"}})
    return d


def test_version_is_written_once_and_verified(tmp_path):
    d = _make_version(tmp_path)
    manifest = registry.verify_version(d)
    assert manifest["version"] == "v1" and "retrieval/items.npz" in manifest["checksums"]
    with pytest.raises(ArtifactError, match="already exists"):
        registry.start_version(tmp_path, "v1")


def test_tampered_or_missing_file_fails_verification(tmp_path):
    d = _make_version(tmp_path)
    (d / "retrieval" / "items.npz").write_bytes(b"corrupt")
    with pytest.raises(ArtifactMismatchError, match="changed.*items.npz"):
        registry.verify_version(d)
    (d / "retrieval" / "items.npz").unlink()
    with pytest.raises(ArtifactMismatchError, match="missing.*items.npz"):
        registry.verify_version(d)


def test_promote_switches_pointer_and_refuses_bad_versions(tmp_path):
    _make_version(tmp_path, "v1")
    bad = _make_version(tmp_path, "v2")
    registry.promote(tmp_path, "v1")
    assert registry.current_version(tmp_path) == "v1"
    assert registry.resolve_version(tmp_path) == tmp_path / "v1"
    (bad / "retrieval" / "items.npz").write_bytes(b"x")
    with pytest.raises(ArtifactMismatchError):
        registry.promote(tmp_path, "v2")
    assert registry.current_version(tmp_path) == "v1"  # unchanged
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".CURRENT")]  # no temp files left
    assert registry.list_versions(tmp_path) == ["v1", "v2"]


def test_missing_pointer_and_version_say_what_to_do(tmp_path):
    with pytest.raises(ArtifactError, match="recsys train"):
        registry.current_version(tmp_path)
    with pytest.raises(ArtifactError, match="not found"):
        registry.resolve_version(tmp_path, "nope")
    with pytest.raises(ArtifactError, match="letters, digits"):
        registry.start_version(tmp_path, "../escape")
    (tmp_path / "v9").mkdir()
    (tmp_path / "v9" / "manifest.json").write_text("{not json")
    with pytest.raises(ArtifactError, match="unreadable"):
        registry.read_manifest(tmp_path / "v9")


def test_promote_and_versions_commands(tmp_path, capsys):
    from recsys.cli import main
    _make_version(tmp_path, "v1")
    _make_version(tmp_path, "v2")
    assert main(["promote", "v2", "--artifacts", str(tmp_path)]) == 0
    assert registry.current_version(tmp_path) == "v2"
    assert main(["versions", "--artifacts", str(tmp_path)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert any(line.startswith("* v2") for line in lines) and any(line.startswith("  v1") for line in lines)
    # Rollback is promoting the previous version; a missing one is a clear error, pointer unchanged.
    assert main(["promote", "v1", "--artifacts", str(tmp_path)]) == 0
    assert main(["promote", "v3", "--artifacts", str(tmp_path)]) == 2
    assert "v3" in capsys.readouterr().err
    assert registry.current_version(tmp_path) == "v1"


def test_writing_version_removes_an_unfinished_version_and_keeps_a_sealed_one(tmp_path):
    with pytest.raises(RuntimeError, match="training failed"):
        with registry.writing_version(tmp_path, "v1") as d:
            (d / "partial.bin").write_bytes(b"x")
            raise RuntimeError("training failed")
    assert not (tmp_path / "v1").exists()  # nothing left behind, the name can be retried
    with registry.writing_version(tmp_path, "v1") as d:
        (d / "model.bin").write_bytes(b"x")
        registry.finalize_version(d, {})
    assert registry.verify_version(tmp_path / "v1")["checksums"] == {"model.bin": registry._sha256(d / "model.bin")}
