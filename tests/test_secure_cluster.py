"""The whole system on the secured cluster (`secure_broker`: SASL_SSL, SCRAM, ACLs), each
command run as a user runs it (a subprocess) and as the principal it runs as in production:

admin `topics create` -> producer `produce` -> trainer `retrain` -> two workers (one group)
answer every click -> trainer `retrain` + `publish` -> both workers swap; trainer `train
--topic`; analyst `replay` offline and `--live`; connection refusals as one line naming the
setting; and no password in anything these runs wrote.

Topic, group and app names start with the ACL prefixes of `PRINCIPAL_ACLS`.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING
from uuid import uuid4

import orjson
import pytest

from deploy.kafka.secure import PRINCIPALS
from kafka_io import KafkaSettings, load_settings
from kafka_io.clients import admin as admin_client
from schemas.artifact import read_artifact
from schemas.events import decode_recommendation
from schemas.registry import Registry
from stream_app.harness import WorkerProcess, click_message, produce_clicks
from stream_app.synthetic import write_random_artifact
from tests.kafka_util import consume_all
from tests.test_retrain import _markov_clicks
from tests.test_worker import Names, start_worker

if TYPE_CHECKING:
    from tests.conftest import SecureBroker

pytestmark = [pytest.mark.kafka, pytest.mark.slow]

SMALL = ["--set", "layers=16", "--set", "n_epochs=1", "--set", "n_sample=32"]


@dataclass
class Cluster:
    """The module's topics on the secure broker, and everything its runs printed."""

    broker: SecureBroker
    tmp: Path
    names: Names
    n_clicks: int
    until_ms: int  # after the archive's clicks, before any click a test adds
    outputs: list[str] = field(default_factory=list)

    def config(self, principal: str) -> str:
        return str(self.broker.properties(principal))

    def settings(self, principal: str) -> KafkaSettings:
        return load_settings(self.config(principal), environ={})

    def run(
        self, *argv: str, principal: str | None = None, timeout: float = 180.0
    ) -> subprocess.CompletedProcess:
        """`gru4stream ARGV [--kafka-config <principal>.properties]`, as a user runs it."""
        return run_command(self, *argv, principal=principal, timeout=timeout)

    @property
    def registry(self) -> Path:
        return self.tmp / "models"


def clean_env() -> dict[str, str]:
    """The environment without ambient Kafka settings: only the command's own file counts."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("GRU4STREAM_KAFKA")}
    env.pop("GRU4STREAM_BOOTSTRAP", None)
    return {**env, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}


def run_command(
    cluster: Cluster | None,
    *argv: str,
    principal: str | None = None,
    timeout: float = 180.0,
) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "gru4stream.cli", *argv]
    if principal is not None:
        assert cluster is not None
        command += ["--kafka-config", cluster.config(principal)]
    done = subprocess.run(
        command, capture_output=True, text=True, timeout=timeout, env=clean_env(), check=False
    )
    if cluster is not None:
        cluster.outputs += [done.stdout, done.stderr]
    return done


def ok(done: subprocess.CompletedProcess) -> str:
    assert done.returncode == 0, f"{done.args[3]} exited {done.returncode}:\n{done.stderr[-3000:]}"
    return done.stdout


@pytest.fixture(scope="module")
def cluster(secure_broker, tmp_path_factory) -> Cluster:
    """Topics created by the admin (`gru4stream topics create`), clicks sent by the producer."""
    tmp = tmp_path_factory.mktemp("secure-cluster")
    tag = uuid4().hex[:8]
    names = Names(
        app_id=f"gru4stream-worker-{tag}",
        clicks=f"clicks-{tag}",
        recs=f"recommendations-{tag}",
        dlq=f"clicks-dlq-{tag}",
        updates=f"model-updates-{tag}",
    )
    now = int(time.time() * 1000)
    events = _markov_clicks(150, 30, now, seed=11)
    cluster = Cluster(secure_broker, tmp, names, len(events), now)
    topics = [
        "--clicks-topic", names.clicks, "--recommendations-topic", names.recs,
        "--dlq-topic", names.dlq, "--model-updates-topic", names.updates,
    ]  # fmt: skip
    out = ok(cluster.run("topics", "create", *topics, principal="admin"))
    assert f"{names.clicks}: 4 partitions" in out and f"{names.updates}: 1 partition" in out

    csv = tmp / "clicks.csv"
    csv.write_text(
        "session_id,item_id,timestamp\n"
        + "".join(f"{e.session_id},{e.item_id},{e.timestamp}\n" for e in events)
    )
    argv = ["--file", str(csv), "--topic", names.clicks, "--time-mode", "keep", "--no-progress"]
    out = ok(cluster.run("produce", *argv, principal="producer"))
    assert f"sent {len(events)} clicks" in out and "failed 0" in out
    return cluster


def retrain(cluster: Cluster, *extra: str) -> str:
    argv = [
        "--topic", cluster.names.clicks, "--updates-topic", cluster.names.updates,
        "--registry", str(cluster.registry), "--device", "cpu", "--no-progress", *SMALL,
        "--min-sessions", "5", *extra,  # a small archive: the gate's default wants 100
    ]  # fmt: skip
    return ok(cluster.run("retrain", *argv, principal="trainer"))


@pytest.fixture(scope="module")
def promoted(cluster: Cluster) -> str:
    """v0001: retrained from the archive by the trainer, promoted and announced."""
    assert "promoted and published" in retrain(cluster)
    assert Registry(cluster.registry).promoted() == "v0001"
    return "v0001"


def answered(cluster: Cluster, expected: int) -> dict[tuple[int, int], str]:
    """click (partition, offset) -> the answering model version, read by the admin, once
    `expected` distinct clicks are answered (a rebalance may answer a click twice)."""

    def by_click(records) -> dict[tuple[int, int], str]:
        recs = [decode_recommendation(r.value) for r in records]
        return {(r.click_partition, r.click_offset): r.model_version for r in recs}

    records = consume_all(
        cluster.settings("admin"),
        cluster.names.recs,
        until=lambda rs: len(by_click(rs)) >= expected,
        timeout_s=90,
        idle_s=1,
    )
    return by_click(records)


def model_version(worker: WorkerProcess) -> str | None:
    try:
        status, body = worker.get("/model")
    except OSError:
        return None
    return body.get("version") if status == 200 and isinstance(body, dict) else None


@pytest.fixture
def workers(cluster: Cluster, promoted: str) -> Iterator[list[WorkerProcess]]:
    """Two workers of one group (`--app-id gru4stream-worker-*`) as the worker principal,
    serving the registry's promoted version."""
    extra = ("--kafka-config", cluster.config("worker"), "--registry", str(cluster.registry))
    extra += ("--loglevel", "info")  # everything a worker logs goes to the password check
    started = []
    try:
        for tag in ("a", "b"):
            started.append(
                start_worker(cluster.tmp, cluster.broker.bootstrap, cluster.names, *extra, tag=tag)
            )
        yield started
    finally:
        for worker in started:
            worker.stop()


def test_every_click_is_answered_and_both_workers_swap_to_the_published_version(
    cluster: Cluster, promoted: str, workers: list[WorkerProcess]
):
    for worker in workers:
        health = worker.wait_ready(timeout=120)
        assert health["partitions"]
    by_click = answered(cluster, cluster.n_clicks)
    assert len(by_click) == cluster.n_clicks  # every click answered
    assert set(by_click.values()) == {promoted}
    assert {model_version(w) for w in workers} == {promoted}

    # A new version: retrained and promoted by the trainer, then announced with `publish`.
    assert "promoted" in retrain(cluster, "--no-publish", "--tolerance", "1")
    assert Registry(cluster.registry).promoted() == "v0002"
    argv = ["v0002", "--registry", str(cluster.registry), "--topic", cluster.names.updates]
    ok(cluster.run("publish", *argv, principal="trainer"))
    deadline = time.monotonic() + 60
    while {model_version(w) for w in workers} != {"v0002"}:
        assert time.monotonic() < deadline, [w.tail() for w in workers]
        time.sleep(0.3)

    # New sessions, spread over the partitions by their keys, so both workers answer some.
    before = [w.metric("gru4stream_recommendations_total") for w in workers]
    now = int(time.time() * 1000)
    fresh = [click_message(f"after-swap-{s}", f"m{s % 30}", now + s) for s in range(40)]
    producer = cluster.settings("producer")
    positions = asyncio.run(produce_clicks(producer, cluster.names.clicks, fresh))
    by_click = answered(cluster, cluster.n_clicks + len(fresh))
    assert {by_click[p] for p in positions} == {"v0002"}
    after = [w.metric("gru4stream_recommendations_total") for w in workers]
    assert all(a > b for a, b in zip(after, before, strict=True)), (before, after)


def password_of(broker: SecureBroker, principal: str) -> str:
    lines = broker.properties(principal).read_text().splitlines()
    (password,) = [ln.split("=", 1)[1] for ln in lines if ln.startswith("sasl.password=")]
    return password


def test_train_reads_the_archive_as_the_trainer(cluster: Cluster):
    out = cluster.tmp / "train"
    # The password on the command line too (the file's, again): metrics.json records the
    # command, which must mask it (the password check at the end reads that file).
    password = ["--kafka-set", f"sasl.password={password_of(cluster.broker, 'trainer')}"]
    argv = [
        "--topic", cluster.names.clicks, "--preset", "quick", "--epochs", "1", "--quiet",
        "--threads", "1", "--device", "cpu", "--out", str(out), "--version", "t0001",
        "--to", str(cluster.until_ms),
        "--split-option", "test_days=2", "--split-option", "n_negatives=0",
    ]  # fmt: skip
    ok(cluster.run("train", *argv, *password, principal="trainer"))
    artifact = read_artifact(out / "model")
    assert artifact.version == "t0001"
    data = artifact.manifest.training_data
    assert data["source"]["topic"] == cluster.names.clicks
    assert data["n_events"] == cluster.n_clicks
    command = orjson.loads((out / "metrics.json").read_bytes())["command"]
    assert "sasl.password=***" in command


def test_replay_offline_and_live_as_the_analyst(cluster: Cluster, promoted: str):
    report_path = cluster.tmp / "replay.json"
    argv = [
        "--topic", cluster.names.clicks, "--model", promoted, "--registry", str(cluster.registry),
        "--to", str(cluster.until_ms), "--k", "10", "--live", "--rate", "400",
        "--json", str(report_path), "--no-progress",
    ]  # fmt: skip
    out = ok(cluster.run("replay", *argv, principal="analyst", timeout=240))
    assert "live, through a worker" in out
    report = orjson.loads(report_path.read_bytes())
    assert report["n_events"] == cluster.n_clicks
    (offline,) = report["models"]
    (live,) = report["live"]
    assert live["sent"] == live["answered"] == cluster.n_clicks
    online = live["versions"][promoted]
    assert online["metrics"]["n_examples"] == offline["n_examples"]
    for name in ("recall@10", "mrr@10", "ndcg@10"):
        assert online["metrics"][name] == pytest.approx(offline["metrics"][name], abs=1e-9)
    # The run's own topics (clicks, answers, changelogs) are gone.
    assert not [t for t in list_topics(cluster.settings("admin")) if t.startswith("replay-")]


def list_topics(settings: KafkaSettings) -> list[str]:
    async def names() -> list[str]:
        client = admin_client(settings)
        await client.start()
        try:
            return await client.list_topics()
        finally:
            await client.close()

    return asyncio.run(names())


# --- refusals ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory) -> Path:
    return write_random_artifact(tmp_path_factory.mktemp("tiny") / "m", version="m1", n_items=20)


@pytest.fixture(scope="module")
def other_ca(tmp_path_factory) -> Path:
    """A CA certificate that did not sign the broker's."""
    tmp = tmp_path_factory.mktemp("other-ca")
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-subj", "/CN=other",
         "-keyout", str(tmp / "k"), "-out", str(tmp / "ca.pem"), "-days", "1"],
        check=True, capture_output=True,
    )  # fmt: skip
    return tmp / "ca.pem"


# case -> (properties, the setting the line must name, exit status); no real password in them
REFUSALS = {
    "no credentials": ("security.protocol=SSL\nssl.ca.location={ca}\n", "security.protocol", 1),
    "plaintext to TLS": ("security.protocol=PLAINTEXT\n", "security.protocol", 1),
    "unknown CA": (
        "security.protocol=SASL_SSL\nsasl.mechanism=SCRAM-SHA-512\nsasl.username=producer\n"
        "sasl.password=unused-7c1\nssl.ca.location={other_ca}\n",
        "ssl.ca.location",
        1,
    ),
    "unknown key": (
        "security.protocol=SASL_SSL\nsasl.username=producer\nsasl.password=unused-7c1\n"
        "ssl.ca.location={ca}\nsasl.pasword=typo\n",
        "sasl.pasword",
        2,
    ),
}


@pytest.mark.parametrize("case", list(REFUSALS))
@pytest.mark.parametrize("command", ["produce", "worker"])
def test_a_refused_connection_is_one_line_naming_the_setting(
    case: str,
    command: str,
    secure_broker,
    other_ca: Path,
    tiny_model: Path,
    tmp_path: Path,
    cluster: Cluster,
):
    text, setting, status = REFUSALS[case]
    properties = tmp_path / "client.properties"
    properties.write_text(
        f"bootstrap.servers={secure_broker.bootstrap}\n"
        + text.format(ca=secure_broker.ca_path, other_ca=other_ca)
    )
    if command == "produce":
        one = tmp_path / "one.csv"
        one.write_text(f"session_id,item_id,timestamp\ns1,m1,{int(time.time() * 1000)}\n")
        argv = ["produce", "--file", str(one), "--topic", cluster.names.clicks, "--no-progress"]
    else:
        argv = ["worker", "--model", str(tiny_model), "--app-id", cluster.names.app_id]
        argv += ["--clicks-topic", cluster.names.clicks, "--data-dir", str(tmp_path / "data")]
    started = time.monotonic()
    done = run_command(cluster, *argv, "--kafka-config", str(properties), timeout=60)
    assert done.returncode == status, done.stderr
    assert done.stderr.count("\n") == 1 and "Traceback" not in done.stderr, done.stderr
    assert done.stderr.startswith(f"gru4stream {command}: ") and setting in done.stderr
    assert time.monotonic() - started < 20


def test_creating_topics_without_the_create_acl_names_the_principal(cluster: Cluster):
    tag = uuid4().hex[:8]
    topics = [
        "--clicks-topic", f"clicks-{tag}", "--recommendations-topic", f"recommendations-{tag}",
        "--dlq-topic", f"clicks-dlq-{tag}", "--model-updates-topic", f"model-updates-{tag}",
    ]  # fmt: skip
    done = cluster.run("topics", "create", *topics, principal="producer", timeout=60)
    assert done.returncode == 1 and done.stderr.count("\n") == 1, done.stderr
    assert done.stderr.startswith("gru4stream topics: creating topic ")
    assert "principal User:producer is not allowed to CREATE it" in done.stderr


# --- no secrets written ------------------------------------------------------------------------


def test_no_password_in_any_log_or_output(cluster: Cluster, promoted: str, secure_broker):
    """Runs last: everything the module's commands and workers printed or wrote (logs,
    registry, manifests, metrics.json, replay JSON) and the broker's logs. (Live replay's
    worker log is removed with its temporary directory.)"""
    passwords = {p: password_of(secure_broker, p).encode() for p in PRINCIPALS}
    assert len(passwords) == 5 and all(len(pw) >= 24 for pw in passwords.values())
    data = secure_broker.config.data_path
    files = [p for p in cluster.tmp.rglob("*") if p.is_file()]
    files += [data / "server.log", data / "jvm.out", data / "acls.log"]
    assert [p for p in files if p.name.endswith(".log")], "no logs to check"
    assert any(p.name == "decisions.jsonl" for p in files)
    texts = {f"output {i}": out.encode() for i, out in enumerate(cluster.outputs)}
    texts |= {str(p): p.read_bytes() for p in files if p.exists()}
    leaks = [
        (where, who) for where, text in texts.items() for who, pw in passwords.items() if pw in text
    ]
    assert not leaks
