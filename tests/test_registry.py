"""The model registry: versions, immutability, promotion, the decision log."""

from __future__ import annotations

import orjson
import pytest

from schemas.artifact import ITEMS, MANIFEST, WEIGHTS, ArtifactError, read_artifact
from schemas.registry import (
    DECISIONS,
    PROMOTED,
    Registry,
    resolve_model,
    version_name,
    version_number,
)
from tests.lifecycle_util import make_artifact


def test_version_names_sort_by_age():
    assert version_name(7) == "v0007"
    assert version_number("v0012") == 12
    assert version_number(version_name(12345)) == 12345
    for bad in ("7", "v1", "v00a1", "../v0001", "v0001/x"):
        with pytest.raises(ValueError):
            version_number(bad)


def test_empty_registry(tmp_path):
    reg = Registry(tmp_path / "models")
    assert reg.versions() == []
    assert reg.latest() is None
    assert reg.promoted() is None
    assert reg.next_version() == "v0001"
    assert reg.decisions() == []


def test_new_version_dir_then_write(tmp_path):
    reg = Registry(tmp_path)
    name, path = reg.new_version_dir()
    assert (name, path) == ("v0001", tmp_path / "v0001")
    make_artifact(path, version=name)
    assert reg.versions() == ["v0001"]
    assert reg.next_version() == "v0002"
    assert reg.load("v0001").manifest.version == "v0001"
    # Writing the same version again is refused: artifacts are immutable.
    with pytest.raises(ArtifactError, match="already exists"):
        make_artifact(path, version=name, seed=1)


def test_add_copies_under_next_name_and_keeps_weights(tmp_path):
    src = make_artifact(tmp_path / "build", version="experiment-7", seed=3)
    reg = Registry(tmp_path / "reg")
    assert reg.add(src) == "v0001"
    assert reg.add(src) == "v0002"
    copy = reg.load("v0002")
    original = read_artifact(src)
    assert copy.manifest.version == "v0002"
    assert copy.items == original.items
    for name, array in original.weights.items():
        assert (copy.weights[name] == array).all()
    # Only version directories are listed (temp dirs, the log, the pointer are not).
    (reg.root / ".v0003.tmp").mkdir()
    (reg.root / "notes").mkdir()
    assert reg.versions() == ["v0001", "v0002"]


def test_versions_sort_numerically_past_9999(tmp_path):
    reg = Registry(tmp_path)
    for n in (9999, 10000, 2):
        make_artifact(tmp_path / version_name(n), version=version_name(n))
    assert reg.versions() == ["v0002", "v9999", "v10000"]
    assert reg.next_version() == "v10001"


def test_add_refuses_corrupt_artifact_and_writes_nothing(tmp_path):
    src = make_artifact(tmp_path / "build")
    weights = src / WEIGHTS
    weights.write_bytes(weights.read_bytes()[:-10])
    reg = Registry(tmp_path / "reg")
    with pytest.raises(ArtifactError, match="weights.npz: sha256"):
        reg.add(src)
    assert reg.versions() == []
    assert not reg.root.exists() or not any(reg.root.iterdir())


def test_load_refuses_tampered_version(tmp_path):
    reg = Registry(tmp_path)
    make_artifact(tmp_path / "v0001", version="v0001")
    (tmp_path / "v0001" / ITEMS).write_bytes(orjson.dumps([f"x{i}" for i in range(20)]))
    with pytest.raises(ArtifactError, match="items.json: sha256"):
        reg.load("v0001")
    with pytest.raises(ArtifactError, match="no such version"):
        reg.path("v0002")


def test_load_refuses_manifest_version_mismatch(tmp_path):
    reg = Registry(tmp_path)
    make_artifact(tmp_path / "v0001", version="v0007")
    with pytest.raises(ArtifactError, match="says version 'v0007'"):
        reg.load("v0001")


def test_promote_and_roll_back(tmp_path):
    reg = Registry(tmp_path)
    for v in ("v0001", "v0002"):
        make_artifact(tmp_path / v, version=v)
    reg.promote("v0002", "better recall@20")
    assert reg.promoted() == "v0002"
    reg.promote("v0001", "rollback")
    assert reg.promoted() == "v0001"
    events = [(d.event, d.version, d.decision) for d in reg.decisions()]
    assert events == [("promote", "v0002", "better recall@20"), ("promote", "v0001", "rollback")]


def test_promote_refuses_missing_or_corrupt(tmp_path):
    reg = Registry(tmp_path)
    make_artifact(tmp_path / "v0001", version="v0001")
    reg.promote("v0001")
    with pytest.raises(ArtifactError):
        reg.promote("v0002")
    (tmp_path / "v0001" / WEIGHTS).write_bytes(b"junk")
    make_artifact(tmp_path / "v0003", version="v0003")
    (tmp_path / "v0003" / WEIGHTS).write_bytes(b"junk")
    with pytest.raises(ArtifactError, match="sha256"):
        reg.promote("v0003")
    assert reg.promoted() == "v0001"  # the pointer did not move


def test_corrupt_pointer_is_an_error(tmp_path):
    reg = Registry(tmp_path)
    (tmp_path / PROMOTED).write_text("{not json")
    with pytest.raises(ArtifactError, match="PROMOTED"):
        reg.promoted()


def test_decision_log_round_trip_and_bad_line(tmp_path):
    reg = Registry(tmp_path)
    reg.record("v0001", {"recall@20": 0.25}, "promoted", baseline=None, primary="recall@20")
    reg.record("v0002", {"recall@20": 0.2}, "rejected", baseline="v0001", reason="worse")
    got = reg.decisions()
    assert [(d.version, d.decision) for d in got] == [("v0001", "promoted"), ("v0002", "rejected")]
    assert got[1].metrics == {"recall@20": 0.2}
    assert got[1].details == {"baseline": "v0001", "reason": "worse"}
    assert got[0].at <= got[1].at
    with open(tmp_path / DECISIONS, "ab") as f:
        f.write(b'{"event": "candidate"\n')
    with pytest.raises(ArtifactError, match=r"decisions.jsonl:3"):
        reg.decisions()


def test_resolve_model(tmp_path):
    reg = Registry(tmp_path / "reg")
    outside = make_artifact(tmp_path / "outside")
    assert resolve_model(str(outside)) == outside
    for v in ("v0001", "v0002"):
        make_artifact(reg.root / v, version=v)
    assert resolve_model("v0001", reg) == reg.root / "v0001"
    assert resolve_model("latest", reg) == reg.root / "v0002"
    with pytest.raises(ArtifactError, match="no version promoted"):
        resolve_model("promoted", reg)
    reg.promote("v0001")
    assert resolve_model("promoted", reg) == reg.root / "v0001"
    with pytest.raises(ArtifactError, match="no registry"):
        resolve_model("v0001")
    with pytest.raises(ArtifactError, match="neither"):
        resolve_model("nonsense", reg)
    assert (reg.root / "v0001" / MANIFEST).is_file()
