"""The secure development broker (`gru4stream broker start --secure`): who may do what, and
the secrets that prove it.

`start --secure` starts the development broker (`deploy.kafka.broker`) locked down, for
trying the real security setup (`var/kafka/<port>-secure` by default; nothing in the test
suite but `tests/test_broker_secure.py` uses it, the rest runs against the plaintext broker):

- one client listener, SASL_SSL with SCRAM-SHA-512, which is also the inter-broker listener
  (the broker authenticates as `admin`); no plaintext listener at all;
- the controller listener takes TLS with a client certificate only (mutual TLS): its principal
  is the broker certificate's `User:CN=gru4stream-broker`, which only the broker's key proves;
- `StandardAuthorizer`, deny by default, `admin` the only super user besides the broker itself,
  and the ACLs of `PRINCIPAL_ACLS` (one table: principal -> grants) created after each start;
- SCRAM users (`admin` and the principals of `PRINCIPAL_ACLS`) created when the storage is
  formatted, with random passwords kept in `scram-passwords.json` (0600) in the data directory;
- a throwaway CA and a broker certificate (SAN `DNS:localhost,IP:127.0.0.1`) made with
  `openssl` into `tls/` on first start; the CA's key is deleted once it signed, so nobody can
  mint another broker certificate. Clients verify the broker with `tls/ca.pem`;
- one `clients/<principal>.properties` (0600) per principal: address, SASL, password, CA.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import NamedTuple

from deploy.kafka.config import LOG4J_CONFIG, BrokerConfig, BrokerError, storage_formatted
from deploy.kafka.java import java_error

SCRAM_MECHANISM = "SCRAM-SHA-512"
SUPER_USER = "admin"  # creates topics and ACLs; also the broker's own inter-broker identity
BROKER_CERT_CN = "gru4stream-broker"  # controller-listener principal: User:CN=gru4stream-broker
AUTHORIZER = "org.apache.kafka.metadata.authorizer.StandardAuthorizer"


class Grant(NamedTuple):
    """Operations allowed on every resource of one type whose name starts with `prefix`."""

    resource: str  # "topic", "group" or "cluster" (the cluster ignores the prefix)
    prefix: str
    operations: tuple[str, ...]


_CLUSTER = Grant("cluster", "kafka-cluster", ("IDEMPOTENT_WRITE",))  # idempotent producers

# The one table of who may do what on the secure broker (besides the super user `admin`).
# Prefixes rather than exact names, so tests can use unique topics such as `clicks-3f2a`;
# note that `clicks` therefore also covers `clicks-dlq`.
PRINCIPAL_ACLS: dict[str, tuple[Grant, ...]] = {
    "producer": (
        Grant("topic", "clicks", ("WRITE", "DESCRIBE")),
        _CLUSTER,
    ),
    "worker": (
        Grant("topic", "clicks", ("READ", "DESCRIBE", "DESCRIBE_CONFIGS")),
        Grant("topic", "model-updates", ("READ", "DESCRIBE", "DESCRIBE_CONFIGS")),
        Grant("topic", "recommendations", ("WRITE", "DESCRIBE", "DESCRIBE_CONFIGS")),
        Grant("topic", "clicks-dlq", ("WRITE", "DESCRIBE", "DESCRIBE_CONFIGS")),
        # Faust's own topics: changelogs `<app-id>-<table>-changelog`, the assignor's topic.
        Grant("topic", "gru4stream-worker", ("ALL",)),
        Grant("group", "gru4stream-worker", ("READ",)),  # the app id is the consumer group
        _CLUSTER,
    ),
    "trainer": (
        Grant("topic", "clicks", ("READ", "DESCRIBE")),  # the archive, read without a group
        Grant("topic", "model-updates", ("WRITE", "DESCRIBE", "CREATE")),
        _CLUSTER,
    ),
    # Offline replay reads the archive; live replay runs a worker on its own `replay-*`
    # topics and group, so an analyst never touches the production topics' writers.
    "analyst": (
        Grant("topic", "clicks", ("READ", "DESCRIBE")),
        Grant("topic", "replay-", ("ALL",)),
        Grant("group", "replay-", ("READ",)),
        _CLUSTER,
    ),
}
PRINCIPALS: tuple[str, ...] = (SUPER_USER, *PRINCIPAL_ACLS)


def acl_rows(acls: dict[str, tuple[Grant, ...]] = PRINCIPAL_ACLS) -> list[tuple[str, ...]]:
    """(principal, resource type, name, pattern type, operation) rows, one per ALLOW ACL."""
    rows = []
    for principal, grants in acls.items():
        for grant in grants:
            cluster = grant.resource == "cluster"
            name = "kafka-cluster" if cluster else grant.prefix
            pattern = "LITERAL" if cluster else "PREFIXED"
            rows += [
                (f"User:{principal}", grant.resource.upper(), name, pattern, op)
                for op in grant.operations
            ]
    return rows


def scram_jaas(username: str, password: str) -> str:
    module = "org.apache.kafka.common.security.scram.ScramLoginModule"
    return f'{module} required username="{username}" password="{password}";'


def secure_properties(config: BrokerConfig, admin_password: str) -> dict[str, str]:
    ctl = f"{config.host}:{config.ctl_port}"
    return {
        # No plaintext listener: every client authenticates and is authorized.
        "listeners": f"CLIENT://{config.bootstrap},CONTROLLER://{ctl}",
        "advertised.listeners": f"CLIENT://{config.bootstrap}",
        "listener.security.protocol.map": "CLIENT:SASL_SSL,CONTROLLER:SSL",
        "sasl.enabled.mechanisms": SCRAM_MECHANISM,
        # One node: the broker only talks to itself (e.g. transaction markers), as the admin.
        "inter.broker.listener.name": "CLIENT",
        "sasl.mechanism.inter.broker.protocol": SCRAM_MECHANISM,
        "listener.name.client.scram-sha-512.sasl.jaas.config": scram_jaas(
            SUPER_USER, admin_password
        ),
        # The controller listener admits only a certificate our CA signed, i.e. the broker's
        # own (the CA key is gone): never User:ANONYMOUS, which would need super-user rights.
        "listener.name.controller.ssl.client.auth": "required",
        "ssl.keystore.type": "PEM",
        "ssl.keystore.location": str(config.broker_pem),
        "ssl.truststore.type": "PEM",
        "ssl.truststore.location": str(config.ca_file),
        "ssl.endpoint.identification.algorithm": "https",
        "authorizer.class.name": AUTHORIZER,
        "super.users": f"User:{SUPER_USER};User:CN={BROKER_CERT_CN}",
        "allow.everyone.if.no.acl.found": "false",
    }


def write_private(path: Path, text: str) -> None:
    """Write a file only its owner can read (it holds a password or a key)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    os.fchmod(fd, 0o600)  # an existing file keeps its old mode through os.open
    with os.fdopen(fd, "w") as f:
        f.write(text)


def _scram_passwords(config: BrokerConfig) -> dict[str, str]:
    """Each principal's SCRAM password: kept in the data directory, made before first format."""
    path = config.passwords_file
    stored: dict[str, str] = json.loads(path.read_text()) if path.is_file() else {}
    missing = [p for p in PRINCIPALS if p not in stored]
    if not missing:
        return stored
    if storage_formatted(config):  # the users exist only as the format created them
        raise BrokerError(
            f"{path} lacks the passwords of {', '.join(missing)} but {config.log_dirs} is"
            " already formatted; delete the data directory to start afresh"
        )
    stored.update({p: secrets.token_urlsafe(24) for p in missing})
    write_private(path, json.dumps(stored, indent=2) + "\n")
    return stored


def _openssl(*args: str | Path) -> None:
    openssl = shutil.which("openssl")
    if openssl is None:
        raise BrokerError("`openssl` is not on the PATH; the secure broker's certificates need it")
    proc = subprocess.run([openssl, *map(str, args)], capture_output=True, text=True)
    if proc.returncode != 0:
        lines = (proc.stderr or proc.stdout).strip().splitlines() or ["no output"]
        raise BrokerError(f"openssl {args[0]} failed: {lines[-1][:300]}")


def _ensure_tls(config: BrokerConfig) -> None:
    """A throwaway CA and the broker's key and certificate, made once per data directory."""
    if config.ca_file.is_file() and config.broker_pem.is_file():
        return
    config.tls_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    key = ("-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes")
    with tempfile.TemporaryDirectory(dir=config.tls_dir) as tmp:
        t = Path(tmp)
        _openssl(
            "req", "-x509", *key, "-keyout", t / "ca.key", "-out", t / "ca.pem",
            "-days", "3650", "-subj", "/CN=gru4stream development CA",
            "-addext", "keyUsage=critical,keyCertSign,cRLSign",
        )  # fmt: skip
        _openssl(
            "req", "-x509", *key, "-keyout", t / "broker.key", "-out", t / "broker.crt",
            "-CA", t / "ca.pem", "-CAkey", t / "ca.key",
            "-days", "825", "-subj", f"/CN={BROKER_CERT_CN}",
            "-addext", "basicConstraints=critical,CA:FALSE",
            "-addext", "keyUsage=critical,digitalSignature",
            # serverAuth for clients, clientAuth for the broker's own controller connection
            "-addext", "extendedKeyUsage=serverAuth,clientAuth",
            "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1",
        )  # fmt: skip
        ca_pem = (t / "ca.pem").read_text()
        keystore = (t / "broker.key").read_text() + (t / "broker.crt").read_text() + ca_pem
        write_private(config.broker_pem, keystore)
        config.ca_file.write_text(ca_pem)
    # The CA key leaves with the temporary directory: no other certificate can be signed.


def client_settings(config: BrokerConfig, principal: str, password: str) -> str:
    """A principal's `client.properties` for the secure broker (keys as in the README)."""
    lines = [
        f"bootstrap.servers={config.bootstrap}",
        "security.protocol=SASL_SSL",
        f"sasl.mechanism={SCRAM_MECHANISM}",
        f"sasl.username={principal}",
        f"sasl.password={password}",
        f"ssl.ca.location={config.ca_file.resolve()}",
        "ssl.endpoint.identification.algorithm=https",
    ]
    return "\n".join(lines) + "\n"


def _write_client_settings(config: BrokerConfig, passwords: dict[str, str]) -> None:
    config.clients_dir.mkdir(mode=0o700, exist_ok=True)
    for principal in PRINCIPALS:
        write_private(
            config.client_properties(principal),
            client_settings(config, principal, passwords[principal]),
        )
    # The Java admin client names the password and the CA differently.
    java_admin = [
        f"bootstrap.servers={config.bootstrap}",
        "security.protocol=SASL_SSL",
        f"sasl.mechanism={SCRAM_MECHANISM}",
        f"sasl.jaas.config={scram_jaas(SUPER_USER, passwords[SUPER_USER])}",
        "ssl.truststore.type=PEM",
        f"ssl.truststore.location={config.ca_file.resolve()}",
    ]
    write_private(config.admin_java_properties, "\n".join(java_admin) + "\n")


def prepare_secure(config: BrokerConfig) -> dict[str, str]:
    """Certificates, passwords and client files for a secure start; returns the passwords."""
    config.data_path.chmod(0o700)  # the data holds keys, passwords and SCRAM hashes
    _ensure_tls(config)
    passwords = _scram_passwords(config)
    _write_client_settings(config, passwords)
    return passwords


# Kafka's Java admin client, run from source (one JVM, no build step): reads the admin's
# properties file (argument) and tab-separated `acl_rows` (stdin), creates them all, then waits
# until the broker's authorizer shows them (CreateAcls returns once the controller committed).
_GRANT_ACLS_JAVA = """\
import java.io.*;
import java.nio.file.*;
import java.util.*;
import org.apache.kafka.clients.admin.Admin;
import org.apache.kafka.common.acl.*;
import org.apache.kafka.common.resource.*;

public class GrantAcls {
    public static void main(String[] args) throws Exception {
        Properties props = new Properties();
        try (InputStream in = Files.newInputStream(Path.of(args[0]))) { props.load(in); }
        List<AclBinding> acls = new ArrayList<>();
        BufferedReader rows = new BufferedReader(new InputStreamReader(System.in));
        for (String line; (line = rows.readLine()) != null; ) {
            if (line.isBlank()) continue;
            String[] f = line.split("\\t");
            acls.add(new AclBinding(
                new ResourcePattern(ResourceType.fromString(f[1]), f[2],
                                    PatternType.fromString(f[3])),
                new AccessControlEntry(f[0], "*", AclOperation.fromString(f[4]),
                                       AclPermissionType.ALLOW)));
        }
        try (Admin admin = Admin.create(props)) {
            admin.createAcls(acls).all().get();
            long deadline = System.currentTimeMillis() + 30_000;
            while (!admin.describeAcls(AclBindingFilter.ANY).values().get().containsAll(acls)) {
                if (System.currentTimeMillis() > deadline)
                    throw new IllegalStateException("the broker does not show the new ACLs");
                Thread.sleep(100);
            }
        }
    }
}
"""


def grant_acls(config: BrokerConfig, java: str, lib: Path) -> None:
    """Create the ACLs of PRINCIPAL_ACLS as the super user (idempotent; on every start)."""
    source = config.data_path / "GrantAcls.java"
    source.write_text(_GRANT_ACLS_JAVA)
    cmd = [
        java,
        "-Xmx128m",
        *config.jvm_options,
        f"-Dlog4j2.configurationFile={LOG4J_CONFIG}",
        f"-Dgru4stream.kafka.log={config.data_path / 'acls.log'}",
        "-cp",
        f"{lib}/*",
        str(source),
        str(config.admin_java_properties),
    ]
    rows = "".join("\t".join(row) + "\n" for row in acl_rows())
    try:
        proc = subprocess.run(cmd, input=rows, capture_output=True, text=True, timeout=120)
    except subprocess.TimeoutExpired:
        raise BrokerError("creating the ACLs took more than 120 s") from None
    if proc.returncode != 0:
        reason = java_error(proc.stderr + "\n" + proc.stdout) or "no output"
        raise BrokerError(f"creating the ACLs failed: {reason}")
