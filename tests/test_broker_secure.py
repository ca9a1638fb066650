"""The secure development broker: TLS verified by its own CA, SCRAM users, ACLs per principal.

The broker tests share one secure broker (the session fixture `secure_broker`, about 8 s to
start); the others check the generated configuration and secrets without a broker.
"""

from __future__ import annotations

import asyncio
import socket
import ssl
import stat
import uuid
from pathlib import Path

import pytest
from aiokafka import AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.conn import create_conn
from aiokafka.errors import KafkaError, TopicAuthorizationFailedError
from aiokafka.helpers import create_ssl_context

from deploy.kafka import broker, secure
from deploy.kafka.broker import BrokerConfig
from deploy.kafka.secure import PRINCIPAL_ACLS, PRINCIPALS

CLIENT_KEYS = [
    "bootstrap.servers",
    "security.protocol",
    "sasl.mechanism",
    "sasl.username",
    "sasl.password",
    "ssl.ca.location",
    "ssl.endpoint.identification.algorithm",
]


def _read_properties(path: Path) -> dict[str, str]:
    lines = [ln for ln in path.read_text().splitlines() if ln and not ln.startswith("#")]
    return dict(ln.split("=", 1) for ln in lines)


def _aiokafka_options(path: Path, password: str | None = None) -> dict:
    props = _read_properties(path)
    return {
        "bootstrap_servers": props["bootstrap.servers"],
        "security_protocol": props["security.protocol"],
        "sasl_mechanism": props["sasl.mechanism"],
        "sasl_plain_username": props["sasl.username"],
        "sasl_plain_password": password or props["sasl.password"],
        "ssl_context": create_ssl_context(cafile=props["ssl.ca.location"]),
    }


async def _create_topic(admin_properties: Path, name: str) -> None:
    admin = AIOKafkaAdminClient(**_aiokafka_options(admin_properties))
    await admin.start()
    try:
        await admin.create_topics([NewTopic(name, 1, 1)])
    finally:
        await admin.close()


async def _produce(properties: Path, topic: str) -> None:
    producer = AIOKafkaProducer(
        **_aiokafka_options(properties), acks="all", enable_idempotence=True
    )
    await producer.start()
    try:
        await producer.send_and_wait(topic, b"v", key=b"k")
    finally:
        await producer.stop()


def _unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


# --- without a broker ------------------------------------------------------------------------


def _secure_config(tmp_path: Path) -> BrokerConfig:
    return BrokerConfig(port=19092, controller_port=19093, data_dir=tmp_path, secure=True)


def test_secure_properties_have_no_plaintext_and_deny_by_default(tmp_path: Path) -> None:
    text = broker.server_properties(_secure_config(tmp_path), "pw")
    props = dict(ln.split("=", 1) for ln in text.splitlines() if not ln.startswith("#"))
    assert props["listeners"] == "CLIENT://127.0.0.1:19092,CONTROLLER://127.0.0.1:19093"
    assert props["listener.security.protocol.map"] == "CLIENT:SASL_SSL,CONTROLLER:SSL"
    assert "PLAINTEXT" not in text
    assert props["listener.name.controller.ssl.client.auth"] == "required"
    assert props["super.users"] == "User:admin;User:CN=gru4stream-broker"
    assert "ANONYMOUS" not in text
    assert props["allow.everyone.if.no.acl.found"] == "false"
    assert props["authorizer.class.name"].endswith("StandardAuthorizer")
    with pytest.raises(ValueError):
        broker.server_properties(_secure_config(tmp_path))


def test_acl_table_uses_prefixes_and_never_names_the_super_user() -> None:
    rows = secure.acl_rows()
    assert {r[0] for r in rows} == {f"User:{p}" for p in PRINCIPAL_ACLS}
    assert "admin" not in PRINCIPAL_ACLS and PRINCIPALS[0] == "admin"
    assert all(r[3] == "PREFIXED" for r in rows if r[1] != "CLUSTER")
    assert ("User:producer", "TOPIC", "clicks", "PREFIXED", "WRITE") in rows
    assert not [r for r in rows if r[0] == "User:worker" and r[2] == "model-updates"
                and r[4] in ("WRITE", "ALL")]  # fmt: skip


def test_secrets_are_private_and_reused(tmp_path: Path) -> None:
    config = _secure_config(tmp_path)
    config.data_path.mkdir(exist_ok=True)
    first = secure.prepare_secure(config)
    pem, ca = config.broker_pem.read_bytes(), config.ca_file.read_bytes()
    assert secure.prepare_secure(config) == first  # same passwords, same certificates
    assert (config.broker_pem.read_bytes(), config.ca_file.read_bytes()) == (pem, ca)
    assert set(first) == set(PRINCIPALS) and len(set(first.values())) == len(first)
    for path in (config.passwords_file, config.broker_pem, config.admin_java_properties):
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert not list(config.tls_dir.rglob("*.key"))  # the CA key is thrown away


# --- against a running secure broker ---------------------------------------------------------


@pytest.mark.kafka
@pytest.mark.slow
def test_client_properties_per_principal(secure_broker) -> None:
    for principal in PRINCIPALS:
        path = secure_broker.properties(principal)
        assert path.parent.name == "clients" and path.name == f"{principal}.properties"
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
        props = _read_properties(path)
        assert list(props) == CLIENT_KEYS
        assert props["bootstrap.servers"] == secure_broker.bootstrap
        assert props["security.protocol"] == "SASL_SSL"
        assert props["sasl.mechanism"] == "SCRAM-SHA-512"
        assert props["sasl.username"] == principal and len(props["sasl.password"]) >= 24
        assert Path(props["ssl.ca.location"]) == secure_broker.ca_path.resolve()
        assert props["ssl.endpoint.identification.algorithm"] == "https"
    assert secure_broker.admin_properties == secure_broker.properties("admin")


@pytest.mark.kafka
@pytest.mark.slow
def test_ca_verifies_the_broker_certificate(secure_broker) -> None:
    host, _, port = secure_broker.bootstrap.rpartition(":")
    with_ca = ssl.create_default_context(cafile=str(secure_broker.ca_path))
    with (
        socket.create_connection((host, int(port)), timeout=10) as raw,
        with_ca.wrap_socket(raw, server_hostname=host) as tls,
    ):
        assert ("IP Address", "127.0.0.1") in tls.getpeercert()["subjectAltName"]
    without_ca = ssl.create_default_context()  # the system's CAs only
    with (
        pytest.raises(ssl.SSLCertVerificationError),
        socket.create_connection((host, int(port)), timeout=10) as raw,
    ):
        without_ca.wrap_socket(raw, server_hostname=host)


@pytest.mark.kafka
@pytest.mark.slow
def test_producer_writes_clicks_but_worker_cannot_write_model_updates(secure_broker) -> None:
    clicks, updates = _unique("clicks"), _unique("model-updates")

    async def scenario() -> None:
        await _create_topic(secure_broker.admin_properties, clicks)
        await _create_topic(secure_broker.admin_properties, updates)
        await _produce(secure_broker.properties("producer"), clicks)
        with pytest.raises(TopicAuthorizationFailedError):
            await _produce(secure_broker.properties("worker"), updates)

    asyncio.run(asyncio.wait_for(scenario(), 60))


@pytest.mark.kafka
@pytest.mark.slow
def test_wrong_password_is_refused(secure_broker) -> None:
    options = _aiokafka_options(secure_broker.properties("producer"), password="wrong")
    host, _, port = options.pop("bootstrap_servers").rpartition(":")

    async def connect() -> None:
        conn = await create_conn(host, int(port), request_timeout_ms=10_000, **options)
        conn.close()

    with pytest.raises(KafkaError, match="(?i)authentication failed"):
        asyncio.run(connect())
