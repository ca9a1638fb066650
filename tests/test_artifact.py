"""The artifact format: a written artifact reads back whole; a damaged one is refused."""

from __future__ import annotations

import numpy as np
import orjson
import pytest

from schemas.artifact import (
    ITEMS,
    MANIFEST,
    WEIGHTS,
    ArtifactError,
    Manifest,
    expected_shapes,
    read_artifact,
    write_artifact,
)


def _random_artifact(tmp_path, input_kind="shared", n_items=7, layers=(5,), emb=0):
    manifest = Manifest(
        version="v-test",
        input_kind=input_kind,
        n_items=n_items,
        layers=layers,
        embedding_dim=emb,
        hyperparameters={"loss": "cross-entropy"},
    )
    rng = np.random.default_rng(0)
    weights = {name: rng.normal(size=shape) for name, shape in expected_shapes(manifest).items()}
    items = [f"item-{i}" for i in range(n_items)]
    return write_artifact(tmp_path / "v-test", manifest, weights, items), weights, items


@pytest.mark.parametrize(
    "kind,layers,emb", [("shared", (5,), 0), ("embedding", (4, 6), 3), ("onehot", (5,), 0)]
)
def test_round_trip_keeps_weights_items_and_manifest(tmp_path, kind, layers, emb):
    path, weights, items = _random_artifact(tmp_path, kind, layers=layers, emb=emb)
    artifact = read_artifact(path)
    assert artifact.version == "v-test"
    assert artifact.items == tuple(items)
    assert artifact.manifest.layers == layers
    assert set(artifact.manifest.files) == {WEIGHTS, ITEMS}
    for name, array in weights.items():
        np.testing.assert_allclose(artifact.weights[name], array.astype(np.float32))


def test_artifacts_are_immutable(tmp_path):
    path, weights, items = _random_artifact(tmp_path)
    manifest = read_artifact(path).manifest
    with pytest.raises(ArtifactError, match="already exists"):
        write_artifact(path, manifest, weights, items)


def test_tampered_weights_fail_the_checksum(tmp_path):
    path, _, _ = _random_artifact(tmp_path)
    with open(path / WEIGHTS, "r+b") as f:
        f.seek(200)
        f.write(b"\x00\x01\x02")
    with pytest.raises(ArtifactError, match=r"weights\.npz: sha256 .* does not match"):
        read_artifact(path)


def test_missing_manifest_names_the_directory(tmp_path):
    with pytest.raises(ArtifactError, match="no manifest"):
        read_artifact(tmp_path)


def test_manifest_that_disagrees_with_the_weights_is_refused(tmp_path):
    path, _, _ = _random_artifact(tmp_path)
    manifest = orjson.loads((path / MANIFEST).read_bytes())
    manifest["layers"] = [9]
    (path / MANIFEST).write_bytes(orjson.dumps(manifest))
    with pytest.raises(ArtifactError, match="has shape"):
        read_artifact(path)


def test_unknown_format_version_is_refused(tmp_path):
    path, _, _ = _random_artifact(tmp_path)
    manifest = orjson.loads((path / MANIFEST).read_bytes())
    manifest["format_version"] = 99
    (path / MANIFEST).write_bytes(orjson.dumps(manifest))
    with pytest.raises(ArtifactError, match="format_version 99"):
        read_artifact(path)


def test_nan_weights_and_duplicate_items_are_refused_at_write(tmp_path):
    manifest = Manifest("v", "shared", 3, (2,), 0)
    weights = {n: np.zeros(s) for n, s in expected_shapes(manifest).items()}
    weights["output_bias"][1] = np.nan
    with pytest.raises(ArtifactError, match="NaN"):
        write_artifact(tmp_path / "a", manifest, weights, ["a", "b", "c"])
    weights["output_bias"][1] = 0.0
    with pytest.raises(ArtifactError, match="duplicate"):
        write_artifact(tmp_path / "b", manifest, weights, ["a", "b", "a"])
