"""Turn what goes wrong between a client and the brokers into one line that names a setting.

aiokafka retries and logs the underlying failure, then raises a generic "Unable to
bootstrap"; a user with a wrong CA file or password should not have to read a traceback to
find out. `check_connection` opens one connection the way every client will (TLS, SASL) and
reports the first failure precisely; `explain` words any exception a command ends with.
"""

from __future__ import annotations

import asyncio
import ssl

from aiokafka import errors as kerrors
from aiokafka.conn import create_conn

from kafka_io.clients import auth_options
from kafka_io.settings import KafkaConfigError, KafkaSettings


class KafkaSetupError(RuntimeError):
    """The brokers cannot be used with these settings; the message is one line for the user."""


async def check_connection(settings: KafkaSettings, timeout_s: float = 10.0) -> None:
    """Connect (and authenticate) to the first bootstrap server that answers, or raise
    KafkaSetupError saying why none did."""
    reasons = []
    for host, port in settings.hosts:
        try:
            conn = await asyncio.wait_for(
                create_conn(
                    host, port, request_timeout_ms=int(timeout_s * 1000), **auth_options(settings)
                ),
                timeout_s,
            )
        except Exception as exc:  # noqa: BLE001 - every failure is worded below
            reasons.append(explain(exc, settings, f"{host}:{port}"))
            continue
        conn.close()
        return
    raise KafkaSetupError(reasons[0] if len(reasons) == 1 else "; ".join(reasons))


def explain(exc: BaseException, settings: KafkaSettings, where: str | None = None) -> str:
    """One line: what failed, and which setting to look at."""
    where = where or settings.bootstrap_servers
    user = settings.sasl_username
    if isinstance(exc, KafkaSetupError | KafkaConfigError):
        return str(exc)
    if isinstance(exc, ssl.SSLCertVerificationError):
        if "hostname" in str(exc.verify_message or exc).lower() or "IP address" in str(exc):
            return (
                f"{where}: the broker's certificate does not name this host "
                f"({exc.verify_message}); check bootstrap.servers or "
                "ssl.endpoint.identification.algorithm"
            )
        return (
            f"{where}: the broker's certificate is not trusted ({exc.verify_message}); "
            f"check ssl.ca.location ({settings.ssl_ca_location or 'system CAs'})"
        )
    if isinstance(exc, ssl.SSLError):
        reason = getattr(exc, "reason", None) or exc  # set only on errors raised by ssl itself
        return (
            f"{where}: TLS handshake failed ({reason}); is this a TLS port? "
            f"check security.protocol ({settings.security_protocol}) and ssl.* settings"
        )
    if isinstance(exc, kerrors.SaslAuthenticationFailed):
        return (
            f"{where}: authentication failed for sasl.username {user!r} with "
            f"sasl.mechanism {settings.sasl_mechanism}: wrong sasl.password or unknown user"
        )
    if isinstance(exc, kerrors.UnsupportedSaslMechanismError):
        return f"{where}: the broker does not accept sasl.mechanism {settings.sasl_mechanism}"
    if isinstance(exc, kerrors.IllegalSaslStateError):
        return (
            f"{where}: this listener does not speak SASL; check security.protocol "
            f"({settings.security_protocol})"
        )
    if isinstance(exc, _DENIED):
        principal = f"principal User:{user}" if user else "this client"
        return f"{where}: {principal} is not allowed to do this (ACL denied: {_name(exc)})"
    if isinstance(exc, ConnectionRefusedError):
        return f"{where}: connection refused; check bootstrap.servers"
    if isinstance(exc, asyncio.TimeoutError | TimeoutError | kerrors.KafkaTimeoutError):
        return (
            f"{where}: no answer in time over {settings.security_protocol}; check "
            "bootstrap.servers and security.protocol (a TLS port waits for a handshake)"
        )
    if isinstance(exc, kerrors.KafkaConnectionError | ConnectionError):
        return (
            f"{where}: the broker closed the connection ({_name(exc)}); does security.protocol "
            f"({settings.security_protocol}) match this listener? (TLS and SASL listeners drop "
            "plaintext and unauthenticated clients, a plaintext one drops TLS)"
        )
    if isinstance(exc, OSError):
        return f"{where}: cannot connect ({exc.strerror or exc}); check bootstrap.servers"
    return f"{where}: {_name(exc)}"


_DENIED = (
    kerrors.TopicAuthorizationFailedError,
    kerrors.GroupAuthorizationFailedError,
    kerrors.ClusterAuthorizationFailedError,
    kerrors.TransactionalIdAuthorizationFailed,
)


def _name(exc: BaseException) -> str:
    text = str(exc).strip()
    if text.startswith(type(exc).__name__):  # aiokafka's errors name themselves
        return text
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__
