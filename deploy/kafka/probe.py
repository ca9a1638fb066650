"""Network probes for the development broker: free ports, and raw Kafka requests that tell
whether a broker answers (plaintext Metadata, or ApiVersions over verified TLS)."""

from __future__ import annotations

import socket
import ssl
import struct
from pathlib import Path


def port_free(host: str, port: int) -> bool:
    """True when nothing listens on host:port (we could bind it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError:
            return False
    return True


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def _recv_exact(sock: socket.socket, n: int) -> bytes:
    buf = bytearray()
    while len(buf) < n:
        chunk = sock.recv(n - len(buf))
        if not chunk:
            raise ConnectionError("connection closed")
        buf += chunk
    return bytes(buf)


def probe(bootstrap: str, timeout: float = 2.0) -> bool:
    """True when a Kafka broker at `host:port` answers a metadata request naming a broker.

    A raw Metadata v4 request (api key 3, non-flexible header): small, synchronous, and
    accepted by Kafka 2.x through 4.x. Anything else on the port (or nothing) gives False.
    """
    host, _, port = bootstrap.rpartition(":")
    client_id = b"gru4stream-probe"
    correlation = 0x6772
    # header: api_key, api_version, correlation_id, client_id; body: topics=null, auto_create=0
    body = struct.pack(">hhih", 3, 4, correlation, len(client_id)) + client_id
    body += struct.pack(">ib", -1, 0)
    try:
        with socket.create_connection((host or "127.0.0.1", int(port)), timeout=timeout) as s:
            s.settimeout(timeout)
            resp = _roundtrip(s, body)
    except (OSError, ConnectionError, ValueError, struct.error):
        return False
    # response: correlation_id, throttle_time_ms, brokers array length, ...
    if len(resp) < 12:
        return False
    corr, _throttle, n_brokers = struct.unpack(">iii", resp[:12])
    return corr == correlation and n_brokers >= 1


def _roundtrip(sock: socket.socket, body: bytes) -> bytes:
    """Send one size-prefixed Kafka request and return the response after its size."""
    sock.sendall(struct.pack(">i", len(body)) + body)
    (size,) = struct.unpack(">i", _recv_exact(sock, 4))
    if not 6 <= size <= 64 * 1024 * 1024:
        raise ValueError(f"implausible response size {size}")
    return _recv_exact(sock, size)


def probe_tls(bootstrap: str, cafile: Path | str, timeout: float = 2.0) -> bool:
    """True when a TLS listener at `host:port`, verified with `cafile`, answers as Kafka.

    A raw ApiVersions v0 request (api key 18): a SASL_SSL listener answers it before any
    authentication, so this needs no password, and the broker accepts connections only once
    it serves. A certificate that `cafile` does not verify gives False.
    """
    host, _, port = bootstrap.rpartition(":")
    host = host or "127.0.0.1"
    client_id = b"gru4stream-probe"
    correlation = 0x6773
    body = struct.pack(">hhih", 18, 0, correlation, len(client_id)) + client_id
    try:
        context = ssl.create_default_context(cafile=str(cafile))
        with (
            socket.create_connection((host, int(port)), timeout=timeout) as raw,
            context.wrap_socket(raw, server_hostname=host) as s,
        ):
            s.settimeout(timeout)
            resp = _roundtrip(s, body)
    except (OSError, ConnectionError, ValueError, struct.error):  # ssl.SSLError is an OSError
        return False
    # response: correlation_id, error_code, api versions array, ...
    corr, error = struct.unpack(">ih", resp[:6])
    return corr == correlation and error == 0
