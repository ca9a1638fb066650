"""Every Kafka client of the project is made here, from one `KafkaSettings`.

aiokafka producers, consumers and admin clients get the same authentication keywords; the
Faust app gets the same settings as `broker_credentials`. Callers add only what is theirs
(acks, group, offsets), so TLS and SASL can never be forgotten at one call site.
"""

from __future__ import annotations

import ssl
from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient

from kafka_io.settings import KafkaSettings


def ssl_context(settings: KafkaSettings) -> ssl.SSLContext | None:
    """The TLS context of SSL and SASL_SSL (None for the plaintext protocols)."""
    if not settings.uses_tls:
        return None
    context = ssl.create_default_context(
        ssl.Purpose.SERVER_AUTH, cafile=settings.ssl_ca_location or None
    )
    context.check_hostname = settings.ssl_check_hostname
    if settings.ssl_certificate_location:
        password = settings.ssl_key_password.reveal() if settings.ssl_key_password else None
        context.load_cert_chain(
            settings.ssl_certificate_location, settings.ssl_key_location, password
        )
    return context


def auth_options(settings: KafkaSettings) -> dict[str, Any]:
    """The aiokafka keywords for the security protocol (no bootstrap, nothing else)."""
    options: dict[str, Any] = {"security_protocol": settings.security_protocol}
    context = ssl_context(settings)
    if context is not None:
        options["ssl_context"] = context
    if settings.uses_sasl:
        assert settings.sasl_password is not None  # checked when the settings were loaded
        options.update(
            sasl_mechanism=settings.sasl_mechanism,
            sasl_plain_username=settings.sasl_username,
            sasl_plain_password=settings.sasl_password.reveal(),
        )
    return options


def client_options(settings: KafkaSettings, **extra: Any) -> dict[str, Any]:
    options = {"bootstrap_servers": settings.bootstrap_servers, **auth_options(settings)}
    if settings.client_id:
        options["client_id"] = settings.client_id
    options.update(extra)
    return options


def producer(settings: KafkaSettings, **extra: Any) -> AIOKafkaProducer:
    """An idempotent producer with acks=all unless `extra` says otherwise (not started)."""
    defaults = {"acks": "all", "enable_idempotence": True}
    return AIOKafkaProducer(**client_options(settings, **{**defaults, **extra}))


def consumer(settings: KafkaSettings, *topics: str, **extra: Any) -> AIOKafkaConsumer:
    """A consumer that commits nothing by itself unless `extra` says otherwise (not started)."""
    defaults = {"enable_auto_commit": False, "auto_offset_reset": "earliest"}
    return AIOKafkaConsumer(*topics, **client_options(settings, **{**defaults, **extra}))


def admin(settings: KafkaSettings, **extra: Any) -> AIOKafkaAdminClient:
    return AIOKafkaAdminClient(**client_options(settings, **extra))


def faust_options(settings: KafkaSettings) -> dict[str, Any]:
    """`faust.App` keywords: the broker URLs, credentials and changelog replication."""
    import faust  # only the worker needs Faust

    options: dict[str, Any] = {
        "broker": [f"kafka://{host}:{port}" for host, port in settings.hosts],
    }
    context = ssl_context(settings)
    if settings.uses_sasl:
        assert settings.sasl_password is not None
        options["broker_credentials"] = faust.SASLCredentials(
            username=settings.sasl_username,
            password=settings.sasl_password.reveal(),
            ssl_context=context,
            mechanism=settings.sasl_mechanism,
        )
    elif context is not None:
        options["broker_credentials"] = faust.SSLCredentials(context)
    if settings.client_id:
        options["broker_client_id"] = settings.client_id
    # Faust needs a number (no "broker default"); the worker resolves None with
    # kafka_io.topics.resolve_replication before building its app.
    if settings.replication_factor:
        options["topic_replication_factor"] = settings.replication_factor
    return options
