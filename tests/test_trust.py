"""Trusted models: only promoted registry versions, no symlinks, read once, HMAC; private views.

Unit tests of the checks first (fast, no broker), then one worker against the real broker.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import socket
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import orjson
import pytest

from batch_training.publish import main as publish_main
from batch_training.publish import model_update_for, promote_for_publishing
from schemas.artifact import ITEMS, REFUSAL_REASONS, WEIGHTS, ArtifactError, read_artifact
from schemas.events import ModelUpdate, decode_model_update, encode
from schemas.registry import DECISIONS, Registry
from schemas.signing import KeyFileError, read_key_file, sign_update, verify_update
from schemas.topics import MODEL_UPDATE_KEY, MODEL_UPDATES, spec_named
from stream_app.harness import click_message
from stream_app.metrics import WorkerMetrics
from stream_app.model_updates import ModelHolder, ModelUpdateFollower, load_model
from stream_app.trust import TrustPolicy
from tests.kafka_util import consume_all, create_topic, produce
from tests.lifecycle_util import make_artifact
from tests.test_worker import T0, Names, recommendations, start_worker

KEY = b"0123456789abcdef-test-key"


def refusal(fn, *args, **kwargs) -> ArtifactError:
    with pytest.raises(ArtifactError) as info:
        fn(*args, **kwargs)
    return info.value


@pytest.fixture
def registry(tmp_path) -> Registry:
    """v0001 promoted, v0002 a candidate the gate rejected, v0003 promoted (rolled back from)."""
    reg = Registry(tmp_path / "models")
    for n in (1, 2, 3):
        make_artifact(reg.root / f"v000{n}", version=f"v000{n}", seed=n)
    reg.promote("v0001", "first")
    reg.record("v0002", {"recall@20": 0.01}, "rejected", baseline="v0001")
    reg.record("v0003", {"recall@20": 0.3}, "promoted", baseline="v0001")
    reg.promote("v0003", "better")
    reg.promote("v0001", "rollback")
    return reg


def announcement(path: Path, version: str | None = None, uri: str | None = None) -> ModelUpdate:
    update = model_update_for(path, uri)
    return update if version is None else ModelUpdate(**{**update.__dict__, "version": version})


# --- the signature -----------------------------------------------------------------------------


def test_signature_covers_every_field_and_needs_the_key(tmp_path):
    update = model_update_for(make_artifact(tmp_path / "m", version="v0001"))
    signed = sign_update(update, KEY)
    assert signed.signature.startswith("hmac-sha256:")
    assert verify_update(signed, KEY) is None
    # Through the wire and back: still valid.
    assert verify_update(decode_model_update(encode(signed)), KEY) is None
    assert "not signed" in verify_update(update, KEY)
    assert "does not match" in verify_update(signed, b"another key of 16+ bytes")
    for change in (
        {"version": "v0002"},
        {"artifact_uri": "/elsewhere"},
        {"checksum": "0" * 64},
        {"metrics": {"recall@20": 1.0}},
        {"created_at": 1},
    ):
        tampered = ModelUpdate(**{**signed.__dict__, **change})
        assert verify_update(tampered, KEY) is not None, change


def test_records_without_a_signature_stay_valid():
    old = {"version": "v1", "artifact_uri": "/m", "checksum": "a" * 64, "metrics": {}}
    update = decode_model_update(orjson.dumps({**old, "created_at": 5}))
    assert update.signature is None
    assert "signature" not in orjson.loads(encode(update))  # the wire form is unchanged


def test_key_file_errors_never_show_the_key(tmp_path):
    path = tmp_path / "key"
    path.write_bytes(KEY + b"\n")
    assert read_key_file(path) == KEY
    path.write_bytes(b"short-secret")
    with pytest.raises(KeyFileError) as info:
        read_key_file(path)
    assert "short-secret" not in str(info.value)
    with pytest.raises(KeyFileError, match="cannot read"):
        read_key_file(tmp_path / "missing")


# --- reading an artifact: once, no links -------------------------------------------------------


def test_symlinked_files_and_directories_are_refused_when_not_followed(tmp_path):
    real = make_artifact(tmp_path / "real", version="v0001")
    linked = tmp_path / "linked"
    linked.mkdir()
    for name in ("manifest.json", ITEMS):
        shutil.copy(real / name, linked / name)
    (linked / WEIGHTS).symlink_to(real / WEIGHTS)
    assert read_artifact(linked).version == "v0001"  # a plain --model DIR: as before
    err = refusal(read_artifact, linked, follow_symlinks=False)
    assert err.reason == "symlink" and "weights.npz" in str(err)

    (tmp_path / "dir-link").symlink_to(real)
    err = refusal(read_artifact, tmp_path / "dir-link", follow_symlinks=False)
    assert err.reason == "symlink"


def test_a_fifo_is_not_an_artifact_file(tmp_path):
    path = make_artifact(tmp_path / "m")
    (path / ITEMS).unlink()
    os.mkfifo(path / ITEMS)  # opening it for reading must not wait for a writer
    err = refusal(read_artifact, path)
    assert "not a regular file" in str(err) and err.reason == "invalid"


def test_the_checked_bytes_are_the_loaded_bytes(tmp_path, monkeypatch):
    """Each file is opened once: a swap after the checksum cannot reach the loader."""
    path = make_artifact(tmp_path / "m")
    opened: list[str] = []
    real_open = os.open

    def counting_open(name, *args, **kwargs):
        opened.append(os.path.basename(os.fsdecode(name)))
        return real_open(name, *args, **kwargs)

    monkeypatch.setattr(os, "open", counting_open)
    read_artifact(path, follow_symlinks=False)
    assert sorted(n for n in opened if n != "m") == sorted(["manifest.json", WEIGHTS, ITEMS])


# --- the registry's word -------------------------------------------------------------------------


def test_was_promoted_follows_the_pointer_and_the_log(registry):
    assert registry.was_promoted("v0001") and registry.was_promoted("v0003")
    assert not registry.was_promoted("v0002") and not registry.was_promoted("v0009")
    assert not registry.was_promoted("../v0001")
    assert registry.gate_decision("v0002") == "rejected"
    assert registry.gate_decision("v0001") is None  # never went through the gate


def test_trusted_loading_from_a_registry(registry, tmp_path):
    trust = TrustPolicy(registry)
    root = registry.root
    # A promoted version loads; so does rolling back to one promoted before.
    for version in ("v0001", "v0003"):
        assert load_model(root / version, announcement(root / version), trust=trust).version == (
            version
        )

    # A copy outside the registry, announced with a valid checksum.
    outside = tmp_path / "outside" / "v0003"
    shutil.copytree(root / "v0003", outside)
    err = refusal(load_model, outside, announcement(outside), trust=trust)
    assert err.reason == "outside_registry"
    # The same through `..` in a file:// URI.
    dotted = Path(f"{root}/../outside/v0003")
    err = refusal(load_model, dotted, announcement(outside, uri=f"file://{dotted}"), trust=trust)
    assert err.reason == "outside_registry" and "outside the registry" in str(err)
    # Another version's directory under the announced name.
    err = refusal(load_model, root / "v0001", announcement(root / "v0001", "v0003"), trust=trust)
    assert err.reason == "outside_registry"

    # The rejected candidate, verified and inside the registry, is still not served.
    err = refusal(load_model, root / "v0002", announcement(root / "v0002"), trust=trust)
    assert err.reason == "not_promoted" and "--force" in str(err)

    # A promoted version whose weights became a link (to the same bytes, even).
    update = announcement(root / "v0003")
    os.replace(root / "v0003" / WEIGHTS, tmp_path / "weights.npz")
    (root / "v0003" / WEIGHTS).symlink_to(tmp_path / "weights.npz")
    err = refusal(load_model, root / "v0003", update, trust=trust)
    assert err.reason == "symlink"

    # A version directory that is itself a link out of the registry.
    make_artifact(tmp_path / "elsewhere", version="v0004")
    (root / "v0004").symlink_to(tmp_path / "elsewhere")
    # (promote() itself refuses a linked version: the log line is written by hand)
    with open(root / DECISIONS, "ab") as f:
        f.write(orjson.dumps({"event": "promote", "version": "v0004", "at": 0, "decision": "x"}))
        f.write(b"\n")
    err = refusal(load_model, root / "v0004", announcement(root / "v0004"), trust=trust)
    assert err.reason == "symlink"

    # Bad or missing signatures, when the worker has a key.
    keyed = TrustPolicy(registry, KEY)
    good = sign_update(announcement(root / "v0001"), KEY)
    assert load_model(root / "v0001", good, trust=keyed).version == "v0001"
    for bad in (announcement(root / "v0001"), sign_update(good, b"not the worker's key!")):
        err = refusal(load_model, root / "v0001", bad, trust=keyed)
        assert err.reason == "signature"

    # The model given at start passes the registry checks too.
    assert load_model(root / "v0001", trust=trust).version == "v0001"
    assert refusal(load_model, root / "v0002", trust=trust).reason == "not_promoted"
    assert refusal(load_model, outside, trust=trust).reason == "outside_registry"


def test_without_a_registry_announcements_still_refuse_links(tmp_path):
    real = make_artifact(tmp_path / "real", version="v1")
    update = announcement(real)
    assert load_model(real, update).version == "v1"
    (real / ITEMS).rename(tmp_path / "items.json")
    (real / ITEMS).symlink_to(tmp_path / "items.json")
    assert load_model(real).version == "v1"  # --model DIR at start: as before
    assert refusal(load_model, real, update).reason == "symlink"


def test_a_refusal_keeps_the_model_and_is_counted_by_reason(registry, tmp_path):
    metrics = WorkerMetrics()

    def on_event(record) -> None:
        if record.outcome == "refused":
            metrics.model_refusals.labels(reason=record.code).inc()

    holder = ModelHolder(on_event=on_event)
    with ThreadPoolExecutor(1) as pool:
        follower = ModelUpdateFollower(None, "unused", holder, pool)  # type: ignore[arg-type]
        follower.trust = TrustPolicy(registry, KEY)
        root = registry.root
        good = sign_update(announcement(root / "v0001"), KEY)
        assert asyncio.run(follower.apply(good))
        rejected = sign_update(announcement(root / "v0002"), KEY)
        unsigned = announcement(root / "v0003")
        for update in (rejected, unsigned):
            assert not asyncio.run(follower.apply(update))
    assert holder.model is not None and holder.model.version == "v0001"
    codes = [(r.version, r.code) for r in holder.history if r.outcome == "refused"]
    assert codes == [("v0002", "not_promoted"), ("v0003", "signature")]
    text = metrics.exposition()[0].decode()
    assert 'gru4stream_model_refusals_total{reason="not_promoted"} 1.0' in text
    assert 'gru4stream_model_refusals_total{reason="signature"} 1.0' in text
    for reason in REFUSAL_REASONS:  # every series is there from the start
        assert f'gru4stream_model_refusals_total{{reason="{reason}"}}' in text


# --- publish --force -----------------------------------------------------------------------------


def test_a_rejected_candidate_needs_force_which_is_recorded(registry, capsys):
    before = len(registry.decisions())
    err = refusal(promote_for_publishing, registry, "v0002")
    assert "--force" in str(err) and len(registry.decisions()) == before
    # The CLI refuses it before contacting any broker (port 9 has none).
    argv = ["v0002", "--registry", str(registry.root), "--bootstrap", "127.0.0.1:9"]
    assert publish_main(argv) == 1
    assert "--force" in capsys.readouterr().err
    assert registry.promoted() == "v0001" and not registry.was_promoted("v0002")

    promote_for_publishing(registry, "v0002", force=True)
    last = registry.decisions()[-1]
    assert (last.event, last.version, last.decision) == ("promote", "v0002", "forced by operator")
    assert last.details == {"forced": True, "gate_decision": "rejected"}
    assert registry.promoted() == "v0002"
    update = announcement(registry.root / "v0002")
    assert load_model(registry.root / "v0002", update, trust=TrustPolicy(registry)).version == (
        "v0002"
    )


def test_worker_options_for_views_and_trust():
    from stream_app.cli import build_parser, config_from_args

    def config(*argv):
        return config_from_args(build_parser().parse_args(list(argv)))

    default = config()
    assert default.web_bind == "127.0.0.1" and not default.expose_sessions
    assert default.model_key_file is None
    assert config("--web-host", "0.0.0.0").web_bind == "0.0.0.0"
    assert config("--web-bind", "10.0.0.5").web_bind == "10.0.0.5"  # the old name, hidden
    assert "--web-bind" not in build_parser().format_help()
    chosen = config("--expose-sessions", "--model-key-file", "/run/secrets/key")
    assert chosen.expose_sessions and chosen.model_key_file == "/run/secrets/key"


# --- one worker against the real broker ----------------------------------------------------------


def _refusals_by_reason(worker) -> dict[str, float]:
    _, text = worker.get("/metrics")
    out = {}
    for line in str(text).splitlines():
        if line.startswith('gru4stream_model_refusals_total{reason="'):
            head, _, value = line.rpartition(" ")
            out[head.split('"')[1]] = float(value)
    return out


def _connects(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=2):
            return True
    except OSError:
        return False


def _non_loopback_address() -> str | None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        try:
            s.connect(("192.0.2.1", 9))  # no packet is sent: this only picks a source address
            address = s.getsockname()[0]
        except OSError:
            return None
    return None if address.startswith("127.") or address == "0.0.0.0" else address


def test_worker_refuses_untrusted_models_keeps_serving_and_keeps_views_private(
    registry, tmp_path, kafka_bootstrap
):
    names = Names.fresh()
    root = registry.root
    key_file = tmp_path / "model.key"
    key_file.write_bytes(KEY)
    make_artifact(tmp_path / "outside" / "v0003", version="v0003", seed=3)
    make_artifact(root / "v0005", version="v0005", seed=5)
    registry.promote("v0005", "promoted, then its weights became a link")
    registry.promote("v0001", "rolled back")
    os.replace(root / "v0005" / WEIGHTS, tmp_path / "v0005-weights.npz")
    (root / "v0005" / WEIGHTS).symlink_to(tmp_path / "v0005-weights.npz")
    create_topic(kafka_bootstrap, spec_named(names.updates, MODEL_UPDATES))

    args = ("--registry", str(root), "--model-key-file", str(key_file))
    worker = start_worker(tmp_path, kafka_bootstrap, names, *args)
    try:
        assert worker.wait_ready()["model_version"] == "v0001"
        bad = {
            "not_promoted": sign_update(announcement(root / "v0002"), KEY),
            "outside_registry": sign_update(announcement(tmp_path / "outside" / "v0003"), KEY),
            "symlink": sign_update(announcement(root / "v0005"), KEY),
            "signature": sign_update(announcement(root / "v0003"), b"a key the worker lacks"),
        }
        dotted = f"file://{root}/../outside/v0003"
        bad_dotted = sign_update(announcement(tmp_path / "outside" / "v0003", uri=dotted), KEY)
        messages = [(MODEL_UPDATE_KEY, encode(u)) for u in [*bad.values(), bad_dotted]]
        produce(kafka_bootstrap, names.updates, messages)
        deadline = time.monotonic() + 30
        while sum(_refusals_by_reason(worker).values()) < 5:
            assert time.monotonic() < deadline, worker.tail()
            time.sleep(0.2)
        want = dict.fromkeys(REFUSAL_REASONS, 0.0) | dict.fromkeys(bad, 1.0)
        want["outside_registry"] = 2.0  # the copy outside, and the same through `..`
        assert _refusals_by_reason(worker) == want

        # The old version keeps answering.
        produce(kafka_bootstrap, names.clicks, [click_message("trust-a", "item-3", T0)])
        ((_, rec),) = recommendations(kafka_bootstrap, names.recs, 1)
        assert rec.model_version == "v0001"
        _, model_view = worker.get("/model")
        assert model_view["version"] == "v0001"
        refused = {h["code"] for h in model_view["history"] if h["outcome"] == "refused"}
        assert refused == set(bad)

        # The views are private: loopback only, no session contents.
        assert worker.get("/sessions/trust-a")[0] == 404  # it exists, and is not shown
        assert worker.get("/sessions/never-seen") == worker.get("/sessions/trust-a")
        port = worker.web_port
        assert _connects("127.0.0.1", port)
        assert not _connects("127.0.0.2", port)  # a 0.0.0.0 bind would accept this
        address = _non_loopback_address()
        if address is not None:
            assert not _connects(address, port)

        # The operator forces the rejected candidate, signed: it loads.
        common = ["--registry", str(root), "--bootstrap", kafka_bootstrap]
        forced = ["v0002", *common, "--topic", names.updates, "--model-key-file", str(key_file)]
        assert publish_main([*forced, "--force"]) == 0
        deadline = time.monotonic() + 30
        while worker.get("/model")[1]["version"] != "v0002":
            assert time.monotonic() < deadline, worker.tail()
            time.sleep(0.2)
    finally:
        worker.stop()
    assert KEY.decode() not in worker.log_path.read_text(errors="replace")  # never logged
    last = consume_all(kafka_bootstrap, names.updates)[-1]
    assert verify_update(decode_model_update(last.value), KEY) is None
    assert registry.decisions()[-1].decision == "forced by operator"


def test_retrain_reads_the_key_once_and_never_prints_it(tmp_path):
    from batch_training.retrain import build_parser, options_from_args

    key_file = tmp_path / "key"
    key_file.write_bytes(KEY + b"\n")
    args = build_parser().parse_args(["--model-key-file", str(key_file)])
    options = options_from_args(args)
    assert options.model_key == KEY and KEY.decode() not in repr(options)
    key_file.write_bytes(b"tiny")
    with pytest.raises(KeyFileError):
        options_from_args(args)
