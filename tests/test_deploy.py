"""The deployment files agree with the code: images, commands, topics, volumes, ports."""

from __future__ import annotations

import argparse
import importlib
import re
import tomllib
from pathlib import Path

import pytest
import yaml

from deploy.kafka.broker import KAFKA_VERSION
from gru4stream.cli import SUBCOMMANDS
from gru4stream.topics import topic_specs
from schemas.topics import ALL_TOPICS

ROOT = Path(__file__).resolve().parents[1]
COMPOSE = ROOT / "deploy" / "compose" / "docker-compose.yml"
COMPOSE_GPU = ROOT / "deploy" / "compose" / "docker-compose.gpu.yml"
K8S = ROOT / "deploy" / "k8s"
DOCKERFILE = ROOT / "deploy" / "docker" / "Dockerfile"
IMAGE = "gru4stream"
KAFKA_IMAGE = f"apache/kafka:{KAFKA_VERSION}"
BOOTSTRAP = "kafka:9092"


def project_version() -> str:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]


def compose(path: Path = COMPOSE) -> dict:
    return yaml.safe_load(path.read_text())


def k8s_docs() -> list[dict]:
    docs = []
    for path in sorted(K8S.glob("*.yaml")):
        docs += [d for d in yaml.safe_load_all(path.read_text()) if d]
    return docs


def k8s_kind(kind: str) -> list[dict]:
    return [d for d in k8s_docs() if d.get("kind") == kind]


def k8s_named(kind: str, name: str) -> dict:
    return next(d for d in k8s_kind(kind) if d["metadata"]["name"] == name)


def pod_spec(doc: dict) -> dict:
    if doc["kind"] == "CronJob":
        return doc["spec"]["jobTemplate"]["spec"]["template"]["spec"]
    return doc["spec"]["template"]["spec"]


def k8s_containers() -> list[tuple[dict, dict, dict]]:
    """(workload, pod spec, container) for every container of every workload."""
    out = []
    for doc in k8s_docs():
        if doc["kind"] in ("StatefulSet", "Deployment", "Job", "CronJob"):
            spec = pod_spec(doc)
            out += [(doc, spec, c) for c in spec["containers"]]
    return out


def is_app_image(image: str) -> bool:
    return image.split(":")[0] == IMAGE


def app_commands() -> list[tuple[str, list[str]]]:
    """(where, argv after `gru4stream`) of every container running the project's image."""
    out = []
    for path in (COMPOSE, COMPOSE_GPU):
        for name, svc in compose(path)["services"].items():
            base = compose()["services"].get(name, {})
            image = svc.get("image", base.get("image", ""))
            if is_app_image(image) and "command" in svc:
                out.append((f"{path.name}:{name}", [str(a) for a in svc["command"]]))
    for doc, _, container in k8s_containers():
        if is_app_image(container["image"]):
            argv = container.get("args") or container.get("command")
            out.append((f"k8s {doc['metadata']['name']}", [str(a) for a in argv]))
    return out


def subcommand_parser(name: str) -> argparse.ArgumentParser:
    """The real argparse parser of a subcommand (its module's build_parser or _parser)."""
    module_name = SUBCOMMANDS[name][0].split(":")[0]
    module = importlib.import_module(module_name)
    for attr in ("build_parser", "_parser"):
        factory = getattr(module, attr, None)
        if factory is not None:
            return factory()
    raise AssertionError(f"{module_name} has no build_parser()/_parser() to check options with")


def parse(argv: list[str]) -> argparse.Namespace:
    parser = subcommand_parser(argv[0])
    parser.exit_on_error = False
    try:
        return parser.parse_args(argv[1:])
    except (SystemExit, argparse.ArgumentError) as exc:  # unknown options still exit
        raise AssertionError(f"`gru4stream {' '.join(argv)}` is refused by its parser") from exc


def compose_mounts(svc: dict) -> dict[str, tuple[str, bool]]:
    """mount path -> (volume or host path, read-only)."""
    mounts = {}
    for entry in svc.get("volumes", []):
        parts = entry.split(":")
        mounts[parts[1]] = (parts[0], len(parts) > 2 and parts[2] == "ro")
    return mounts


def k8s_mounts(spec: dict, container: dict) -> dict[str, tuple[str, bool]]:
    """mount path -> (claim name or volume name, read-only)."""
    claims = {}
    for volume in spec.get("volumes", []):
        pvc = volume.get("persistentVolumeClaim")
        claims[volume["name"]] = pvc["claimName"] if pvc else volume["name"]
    return {
        m["mountPath"]: (claims.get(m["name"], m["name"]), bool(m.get("readOnly")))
        for m in container.get("volumeMounts", [])
    }


# --- images --------------------------------------------------------------------------------


def test_images_match_between_compose_k8s_and_the_project_version():
    version = project_version()
    app = f"{IMAGE}:{version}"
    services = compose()["services"]
    app_images = {s["image"] for s in services.values() if is_app_image(s["image"])}
    assert app_images == {app}
    assert compose(COMPOSE_GPU)["services"]["retrain"]["image"] == f"{app}-cuda"
    assert {s["image"] for s in services.values() if not is_app_image(s["image"])} == {KAFKA_IMAGE}
    by_name = {doc["metadata"]["name"]: c["image"] for doc, _, c in k8s_containers()}
    assert by_name["gru4stream-worker"] == app
    assert by_name["gru4stream-retrain"] == f"{app}-cuda"  # the GPU variant of the same image
    assert by_name["gru4stream-topics"] == app  # `gru4stream topics create`, with credentials
    assert by_name["kafka"] == KAFKA_IMAGE


def test_dockerfile_builds_the_cli_image():
    text = DOCKERFILE.read_text()
    assert 'ENTRYPOINT ["gru4stream"]' in text
    copied = set(re.findall(r"^COPY (\S+)", text, flags=re.M))
    packages = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    for pattern in packages["packages"]["find"]["include"]:
        package = pattern.rstrip("*")
        assert any(c.split("/")[0] == package for c in copied), f"{package} not copied"
    assert "TORCH_INDEX_URL" in text and "whl/cpu" in text  # CPU default, CUDA by build arg
    worker_port = parse(["worker"]).web_port
    assert f"EXPOSE {worker_port}" in text


# --- commands ------------------------------------------------------------------------------


def test_every_command_is_a_real_subcommand_with_accepted_options():
    commands = app_commands()
    assert {argv[0] for _, argv in commands} >= {"worker", "retrain", "produce", "topics"}
    for where, argv in commands:
        assert argv[0] in SUBCOMMANDS, f"{where}: {argv[0]!r} is not a gru4stream subcommand"
        args = parse(argv)
        if hasattr(args, "bootstrap"):
            assert args.bootstrap == BOOTSTRAP, where


def test_a_bad_option_would_be_caught():
    with pytest.raises(AssertionError, match="refused"):
        parse(["worker", "--no-such-option", "1"])
    with pytest.raises(AssertionError, match="refused"):
        parse(["retrain", "--window", "30 days"])


def test_retraining_runs_once_under_cron_and_repeats_under_compose():
    cron = [argv for where, argv in app_commands() if where == "k8s gru4stream-retrain"]
    assert len(cron) == 1 and parse(cron[0]).every is None  # the CronJob schedules it
    args = parse(compose()["services"]["retrain"]["command"])
    assert args.every is not None and args.topic == "clicks"
    cronjob = k8s_kind("CronJob")[0]
    assert cronjob["spec"]["concurrencyPolicy"] == "Forbid"
    container = pod_spec(cronjob)["containers"][0]
    assert str(container["resources"]["limits"]["nvidia.com/gpu"]) == "1"
    assert parse(container["args"]).device == "cuda"


# --- topics --------------------------------------------------------------------------------


def test_topics_are_created_by_the_project_command_with_the_settings_of_schemas():
    """`gru4stream topics create` (kafka_io, so TLS and SASL work), not `kafka-topics.sh`,
    which has no credentials for a secured cluster."""
    job = k8s_named("Job", "gru4stream-topics")
    for where, argv in (
        ("compose topics", compose()["services"]["topics"]["command"]),
        ("k8s gru4stream-topics", pod_spec(job)["containers"][0]["args"]),
    ):
        assert argv[:2] == ["topics", "create"], where
        args = parse(argv)
        assert topic_specs(args) == list(ALL_TOPICS), where
        # The replication factor comes from the environment (or the brokers' default), so a
        # cluster's kafka.env / Secret decides it, not a flag fixed here.
        assert args.replication_factor is None and not args.kafka_set, where
    assert compose()["services"]["topics"]["depends_on"]["kafka"]["condition"] == "service_healthy"
    for path in [COMPOSE, *K8S.glob("*.yaml")]:
        assert "kafka-topics.sh" not in path.read_text(), path.name


def test_commands_use_the_topic_names_of_schemas():
    names = {t.name for t in ALL_TOPICS}
    for where, argv in app_commands():
        args = vars(parse(argv))
        for key, value in args.items():
            if key.endswith("topic") and value is not None:
                assert value in names, f"{where}: {key}={value!r} is not a topic of schemas"


# --- volumes and ports ---------------------------------------------------------------------


def _check_paths(where: str, args: argparse.Namespace, mounts: dict) -> None:
    for option in ("registry", "data_dir"):
        path = getattr(args, option, None)
        if path is None:
            continue
        assert path in mounts, f"{where}: --{option.replace('_', '-')} {path} is not mounted"
    if getattr(args, "data_dir", None):
        assert not mounts[args.data_dir][1], f"{where}: the RocksDB volume must be writable"


def test_compose_volumes_line_up_with_the_paths_passed():
    services = compose()["services"]
    declared = set(compose()["volumes"])
    worker_data = set()
    for name, svc in services.items():
        mounts = compose_mounts(svc)
        for source, _ in mounts.values():
            assert source in declared or source.startswith(("$", ".", "/")), (name, source)
        if not is_app_image(svc["image"]) or "command" not in svc:
            continue
        args = parse(svc["command"])
        _check_paths(name, args, mounts)
        if args.__dict__.get("data_dir"):
            worker_data.add(mounts[args.data_dir][0])
    assert len(worker_data) == 2, "each worker needs its own RocksDB volume"
    registry = compose_mounts(services["retrain"])["/models"]
    assert registry == ("models", False)  # the trainer writes the registry
    for name in ("worker-1", "worker-2"):
        assert compose_mounts(services[name])["/models"][0] == "models"
    assert compose_mounts(services["kafka"])["/var/lib/kafka/data"][0] == "kafka-data"


def test_k8s_volumes_line_up_with_the_paths_passed():
    claims = {d["metadata"]["name"]: d for d in k8s_kind("PersistentVolumeClaim")}
    assert claims["gru4stream-models"]["spec"]["accessModes"] == ["ReadWriteMany"]
    for doc, spec, container in k8s_containers():
        if not is_app_image(container["image"]):
            continue
        mounts = k8s_mounts(spec, container)
        args = parse(container["args"])
        _check_paths(doc["metadata"]["name"], args, mounts)
        if getattr(args, "registry", None):
            claim, read_only = mounts[args.registry]
            assert claim == "gru4stream-models"
            # Workers only read the registry; the retraining job writes it.
            assert read_only == (container["args"][0] == "worker")
    worker = next(
        d for d in k8s_kind("StatefulSet") if d["metadata"]["name"] == "gru4stream-worker"
    )
    templates = {t["metadata"]["name"] for t in worker["spec"]["volumeClaimTemplates"]}
    data_dir = parse(pod_spec(worker)["containers"][0]["args"]).data_dir
    mounted = k8s_mounts(pod_spec(worker), pod_spec(worker)["containers"][0])[data_dir][0]
    assert mounted in templates, "RocksDB lives on a per-pod persistent volume"


def published(entry: str) -> tuple[str, str, int]:
    """A compose `ports` entry -> (host address, host port, container port)."""
    parts = str(entry).split(":")
    address = parts[0] if len(parts) == 3 else "0.0.0.0"  # compose's default: all interfaces
    return address, parts[-2] if len(parts) > 1 else "", int(parts[-1])


def test_ports_match_the_workers_web_port():
    services = compose()["services"]
    for name in ("worker-1", "worker-2"):
        port = parse(services[name]["command"]).web_port
        targets = {published(p)[2] for p in services[name]["ports"]}
        assert targets == {port}, name
        assert f"localhost:{port}/health" in " ".join(services[name]["healthcheck"]["test"])
    host_ports = [published(p)[:2] for s in services.values() for p in s.get("ports", [])]
    assert len(host_ports) == len(set(host_ports)), "two services publish the same host port"

    worker = next(
        d for d in k8s_kind("StatefulSet") if d["metadata"]["name"] == "gru4stream-worker"
    )
    container = pod_spec(worker)["containers"][0]
    port = parse(container["args"]).web_port
    named = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert named == {"web": port}
    assert container["readinessProbe"]["httpGet"] == {"path": "/health", "port": "web"}
    annotations = worker["spec"]["template"]["metadata"]["annotations"]
    assert annotations["prometheus.io/port"] == str(port)
    labels = worker["spec"]["template"]["metadata"]["labels"]
    services_k8s = [s for s in k8s_kind("Service") if s["metadata"]["name"].startswith(IMAGE)]
    assert services_k8s
    for svc in services_k8s:
        assert svc["spec"]["selector"].items() <= labels.items()
        for p in svc["spec"]["ports"]:
            assert p.get("targetPort", p["port"]) in (port, "web")
    assert worker["spec"]["serviceName"] in {s["metadata"]["name"] for s in services_k8s}


def test_kafka_is_reachable_under_the_bootstrap_name():
    host, port = BOOTSTRAP.split(":")
    kafka = compose()["services"]["kafka"]
    assert kafka["hostname"] == host
    assert f"PLAINTEXT://{BOOTSTRAP}" in kafka["environment"]["KAFKA_ADVERTISED_LISTENERS"]
    assert kafka["environment"]["KAFKA_AUTO_CREATE_TOPICS_ENABLE"] == "false"
    service = k8s_named("Service", host)
    assert int(port) in {p["port"] for p in service["spec"]["ports"]}
    sts = k8s_named("StatefulSet", host)
    env = {e["name"]: e["value"] for e in pod_spec(sts)["containers"][0]["env"]}
    assert f"PLAINTEXT://{BOOTSTRAP}" in env["KAFKA_ADVERTISED_LISTENERS"]
    assert env["KAFKA_PROCESS_ROLES"] == "broker,controller"  # KRaft, no ZooKeeper


def test_kustomization_lists_every_manifest():
    kustomization = yaml.safe_load((K8S / "kustomization.yaml").read_text())
    files = {p.name for p in K8S.glob("*.yaml")} - {"kustomization.yaml"}
    assert set(kustomization["resources"]) == files


# --- exposure and credentials ------------------------------------------------------------------

KAFKA_ENV_EXAMPLE = ROOT / "deploy" / "compose" / "kafka.env.example"
KAFKA_SECRET = K8S / "kafka-client-secret.yaml"
CREDENTIAL_VARIABLES = (
    "GRU4STREAM_KAFKA_SECURITY_PROTOCOL",
    "GRU4STREAM_KAFKA_SASL_MECHANISM",
    "GRU4STREAM_KAFKA_SASL_USERNAME",
    "GRU4STREAM_KAFKA_SASL_PASSWORD",
    "GRU4STREAM_KAFKA_SSL_CA_LOCATION",
)


def test_published_ports_listen_on_the_hosts_loopback_only():
    for name, svc in compose()["services"].items():
        for entry in svc.get("ports", []):
            assert published(entry)[0] == "127.0.0.1", f"{name} publishes {entry} to the network"
    assert published("6066:6066")[0] == "0.0.0.0"  # what the check above catches


def test_workers_listen_in_their_pod_but_never_expose_sessions():
    workers = [(where, parse(argv)) for where, argv in app_commands() if argv[0] == "worker"]
    assert len(workers) == 3  # two in compose, the StatefulSet
    for where, args in workers:
        # Probes, the port mapping and the Prometheus scrape come from outside the container.
        assert args.web_bind == "0.0.0.0", where
        assert not args.expose_sessions, f"{where}: /sessions shows users' clicks"
    assert parse(["worker"]).web_bind == "127.0.0.1"  # the default stays private


def test_kafka_credentials_come_from_the_env_file_and_the_secret():
    text = KAFKA_ENV_EXAMPLE.read_text()
    for variable in CREDENTIAL_VARIABLES:
        assert variable in text, f"kafka.env.example does not document {variable}"
    assert "PASSWORD=" not in "".join(
        line for line in text.splitlines() if not line.startswith("#")
    ), "no password in the committed example"
    for name, svc in compose()["services"].items():
        if not is_app_image(svc["image"]):
            continue
        files = [e["path"] if isinstance(e, dict) else e for e in svc.get("env_file", [])]
        assert "kafka.env.example" in files, name
        assert (COMPOSE.parent / files[0]).is_file(), name
        assert not any(k.startswith("GRU4STREAM_KAFKA_SASL") for k in svc["environment"]), name

    (secret,) = [d for d in yaml.safe_load_all(KAFKA_SECRET.read_text()) if d]
    assert secret["kind"] == "Secret"
    secret_text = KAFKA_SECRET.read_text()
    for variable in CREDENTIAL_VARIABLES:
        assert variable in secret_text, f"the Secret template does not document {variable}"
    assert set(secret["stringData"]) <= set(CREDENTIAL_VARIABLES)
    app_containers = [(d, c) for d, _, c in k8s_containers() if is_app_image(c["image"])]
    assert {d["metadata"]["name"] for d, _ in app_containers} == {
        "gru4stream-worker",
        "gru4stream-retrain",
        "gru4stream-topics",
    }
    for doc, container in app_containers:
        refs = [e["secretRef"]["name"] for e in container.get("envFrom", []) if "secretRef" in e]
        assert refs == [secret["metadata"]["name"]], doc["metadata"]["name"]
        mounts = k8s_mounts(pod_spec(doc), container)
        assert mounts["/etc/gru4stream/kafka-ca"] == ("kafka-ca", True), doc["metadata"]["name"]
