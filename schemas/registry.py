"""The model registry: one immutable artifact directory per version, a promotion pointer and
a decision log, under one root (a local directory or a shared volume).

    <root>/v0001/            an artifact (see schemas.artifact), never modified once written
    <root>/v0002/
    <root>/PROMOTED          JSON: the version workers should serve, when and why
    <root>/decisions.jsonl   one JSON object per line: every candidate and every promotion

Version names are `v` + a zero-padded counter, so they sort by name and by age alike, and
the manifest's `version` equals the directory name (workers tag recommendations with it).
A new version is written next to the others under a hidden temporary name and renamed into
place, so a reader never sees half an artifact; two writers racing for the same name make
the second rename fail instead of mixing files.

The interface is deliberately small (list, locate, add, promote, record) so that an object
store can stand behind it later without touching the trainer or the workers.

Workers started with `--registry` serve only versions this registry has promoted at some
time (`was_promoted`: the pointer or a "promote" line of the log), so a version must be
promoted before it is announced. A candidate the gate rejected gets there only when an
operator forces it (`gru4stream publish VERSION --registry ROOT --force`), which the log
records.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import re
import shutil
import socket
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson

from schemas.artifact import (
    MANIFEST,
    Artifact,
    ArtifactError,
    Manifest,
    read_artifact,
)

PROMOTED = "PROMOTED"
DECISIONS = "decisions.jsonl"
RETRAIN_LOCK = "retrain.lock"  # one retraining run at a time (O_CREAT|O_EXCL, see RunLock)
PROMOTION_LOCK = ".promotion.lock"  # flock: promote/pin/publish steps never interleave
VERSION_RE = re.compile(r"^v(\d{4,})$")


def is_version_name(name: str) -> bool:
    return VERSION_RE.match(name) is not None


def version_number(name: str) -> int:
    match = VERSION_RE.match(name)
    if match is None:
        raise ValueError(f"{name!r} is not a registry version name (v0001, v0002, ...)")
    return int(match.group(1))


def version_name(number: int) -> str:
    return f"v{number:04d}"


@dataclass(frozen=True)
class Decision:
    """One line of the decision log."""

    # "candidate" (evaluated, promoted or not), "promote" (pointer moved), "pin"/"unpin"
    # (an operator stopped / allowed automatic promotion)
    event: str
    version: str
    at: int  # epoch ms
    decision: str  # "promoted", "rejected", or the promotion reason
    metrics: dict[str, Any]
    details: dict[str, Any]

    def to_dict(self) -> dict[str, Any]:
        return {
            "event": self.event,
            "version": self.version,
            "at": self.at,
            "decision": self.decision,
            "metrics": self.metrics,
            "details": self.details,
        }


class Registry:
    """Versioned model artifacts under `root`."""

    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.root = Path(root)

    def __repr__(self) -> str:
        return f"Registry({str(self.root)!r})"

    # --- versions --------------------------------------------------------------------------

    def versions(self) -> list[str]:
        """Every stored version, oldest first (temporary and foreign entries are skipped)."""
        if not self.root.is_dir():
            return []
        names = [p.name for p in self.root.iterdir() if p.is_dir() and is_version_name(p.name)]
        return sorted(names, key=version_number)

    def latest(self) -> str | None:
        versions = self.versions()
        return versions[-1] if versions else None

    def next_version(self) -> str:
        latest = self.latest()
        return version_name(1 if latest is None else version_number(latest) + 1)

    def new_version_dir(self) -> tuple[str, Path]:
        """The name and the (not yet existing) directory for the next version.

        Write the artifact there with its manifest version set to the name, e.g.
        `write_artifact(path, manifest(version=name), ...)`; the write is atomic.
        """
        name = self.next_version()
        self.root.mkdir(parents=True, exist_ok=True)
        return name, self.root / name

    def path(self, version: str) -> Path:
        """The directory of a stored version; ArtifactError if there is none."""
        version_number(version)  # reject anything that is not a version name (../, paths)
        path = self.root / version
        if not (path / MANIFEST).is_file():
            raise ArtifactError(f"{path}: no such version in registry {self.root}")
        return path

    def uri(self, version: str) -> str:
        """Where workers find the artifact (announced in ModelUpdate.artifact_uri)."""
        return str(self.path(version).resolve())

    def load(self, version: str) -> Artifact:
        """Read and verify a stored artifact (checksums, shapes, vocabulary; no symlinks,
        which a worker would refuse)."""
        path = self.path(version)
        artifact = read_artifact(path, follow_symlinks=False)
        if artifact.manifest.version != version:
            raise ArtifactError(
                f"{path / MANIFEST}: says version {artifact.manifest.version!r}, "
                f"stored as {version!r}"
            )
        return artifact

    def add(self, artifact_dir: str | os.PathLike[str]) -> str:
        """Copy a verified artifact in as the next version; returns the new version name.

        The artifact is checked first (a corrupt one raises ArtifactError and nothing is
        written). Its manifest's `version` becomes the registry name; weights and items are
        copied byte for byte, so the checksums in the manifest stay valid.
        """
        source = read_artifact(artifact_dir)
        self.root.mkdir(parents=True, exist_ok=True)
        name = self.next_version()
        staging = Path(tempfile.mkdtemp(prefix=f".{name}.", dir=self.root))
        try:
            for entry in source.path.iterdir():
                if entry.name != MANIFEST and entry.is_file():
                    shutil.copy2(entry, staging / entry.name)
            manifest = Manifest(**{**source.manifest.__dict__, "version": name})
            (staging / MANIFEST).write_bytes(
                orjson.dumps(manifest.to_dict(), option=orjson.OPT_INDENT_2)
            )
            read_artifact(staging)  # verify the copy before it becomes visible
            os.rename(staging, self.root / name)
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
        return name

    # --- promotion ---------------------------------------------------------------------------

    def promote(self, version: str, reason: str = "promoted", **details: Any) -> None:
        """Make `version` the one workers should serve (also how an operator rolls back).

        `details` go to the log line (e.g. `forced=True` for a candidate the gate rejected).
        """
        self.load(version)  # never point at a corrupt or missing artifact
        at = _now_ms()
        pointer = {"version": version, "at": at, "reason": reason}
        _write_atomic(self.root / PROMOTED, orjson.dumps(pointer))
        self._append(Decision("promote", version, at, reason, {}, details))

    def promoted(self) -> str | None:
        """The promoted version, or None when nothing was promoted yet."""
        path = self.root / PROMOTED
        if not path.is_file():
            return None
        try:
            pointer = orjson.loads(path.read_bytes())
            version = pointer["version"]
        except (orjson.JSONDecodeError, KeyError, TypeError) as exc:
            raise ArtifactError(f"{path}: unreadable promotion pointer: {exc}") from None
        if not isinstance(version, str) or not is_version_name(version):
            raise ArtifactError(f"{path}: {version!r} is not a version name")
        return version

    def was_promoted(self, version: str) -> bool:
        """Whether `version` is or ever was the promoted one (pointer, then the log).

        This is what a worker with `--registry` requires of anything it loads: rolling back
        to an older promoted version stays possible, a candidate never promoted does not.
        """
        if not is_version_name(version):
            return False
        if self.promoted() == version:
            return True
        return any(d.event == "promote" and d.version == version for d in self.decisions())

    def promoted_history(self) -> list[str]:
        """Versions in the order they were promoted (newest last, each once, at its last
        promotion)."""
        order: list[str] = []
        for d in self.decisions():
            if d.event == "promote":
                if d.version in order:
                    order.remove(d.version)
                order.append(d.version)
        return order

    def newest_promoted(self) -> str | None:
        """The highest version ever promoted: publishing anything older is a rollback."""
        history = self.promoted_history()
        return max(history, key=version_number) if history else None

    # --- pins: an operator's word stops automatic promotion ------------------------------------

    def pin(self, version: str, reason: str = "pinned by operator") -> None:
        self._append(Decision("pin", version, _now_ms(), reason, {}, {}))

    def unpin(self, reason: str = "unpinned by operator") -> None:
        current = self.pinned() or "-"
        self._append(Decision("unpin", current, _now_ms(), reason, {}, {}))

    def pinned(self) -> str | None:
        """The pinned version while a pin is in force (the last pin/unpin line is a pin)."""
        state = None
        for d in self.decisions():
            if d.event == "pin":
                state = d.version
            elif d.event == "unpin":
                state = None
        return state

    @contextlib.contextmanager
    def promotion_lock(self) -> Any:
        """Exclusive for a short read-check-promote step (retrain's promotion, publish):
        an operator's rollback cannot slip between retrain's check and its promotion."""
        self.root.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.root / PROMOTION_LOCK, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)
            os.close(fd)

    def gate_decision(self, version: str) -> str | None:
        """The promotion gate's last word on a candidate ("promoted", "rejected", ...), or
        None for a version that never went through it (added by hand)."""
        decisions = [d for d in self.decisions() if d.event == "candidate" and d.version == version]
        return decisions[-1].decision if decisions else None

    # --- decision log --------------------------------------------------------------------------

    def record(
        self, candidate: str, metrics: dict[str, Any], decision: str, **details: Any
    ) -> Decision:
        """Append one evaluated candidate (promoted or not) to the decision log."""
        entry = Decision("candidate", candidate, _now_ms(), decision, dict(metrics), details)
        self._append(entry)
        return entry

    def decisions(self) -> list[Decision]:
        """The decision log, oldest first; a malformed line raises naming file and line."""
        path = self.root / DECISIONS
        if not path.is_file():
            return []
        out = []
        with open(path, "rb") as f:
            for lineno, line in enumerate(f, 1):
                if not line.strip():
                    continue
                try:
                    d = orjson.loads(line)
                    out.append(
                        Decision(
                            event=str(d["event"]),
                            version=str(d["version"]),
                            at=int(d["at"]),
                            decision=str(d["decision"]),
                            metrics=dict(d.get("metrics") or {}),
                            details=dict(d.get("details") or {}),
                        )
                    )
                except (orjson.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
                    raise ArtifactError(f"{path}:{lineno}: malformed decision: {exc}") from None
        return out

    def _append(self, entry: Decision) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        line = orjson.dumps(entry.to_dict(), option=orjson.OPT_SERIALIZE_NUMPY) + b"\n"
        # One write() on an O_APPEND descriptor: concurrent writers do not interleave lines.
        fd = os.open(self.root / DECISIONS, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            os.write(fd, line)
            os.fsync(fd)
        finally:
            os.close(fd)


class LockHeld(RuntimeError):
    """Another run holds the registry's retrain lock; the message names it."""


class RunLock:
    """`<root>/retrain.lock`: created with O_CREAT|O_EXCL holding {pid, host, at}.

    A lock older than `timeout_ms`, or left by a dead process on this host, is stale and
    taken over (a crashed run must not block retraining forever). Released on exit only if
    it is still ours.
    """

    def __init__(self, root: str | os.PathLike[str], timeout_ms: int) -> None:
        self.path = Path(root) / RETRAIN_LOCK
        self.timeout_ms = timeout_ms
        self.mine: bytes | None = None

    def holder(self) -> dict[str, Any] | None:
        try:
            return dict(orjson.loads(self.path.read_bytes()))
        except FileNotFoundError:
            return None
        except (orjson.JSONDecodeError, TypeError, ValueError, OSError):
            return {}  # unreadable (being written, or garbage): judged by the file's age

    def _stale(self, holder: dict[str, Any]) -> bool:
        try:
            at = int(holder.get("at") or self.path.stat().st_mtime * 1000)
        except OSError:
            return False
        if _now_ms() - at > self.timeout_ms:
            return True
        if holder.get("host") == socket.gethostname() and isinstance(holder.get("pid"), int):
            try:
                os.kill(holder["pid"], 0)
            except ProcessLookupError:
                return True
            except PermissionError:
                return False
        return False

    def acquire(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        body = orjson.dumps({"pid": os.getpid(), "host": socket.gethostname(), "at": _now_ms()})
        for _ in range(2):  # a second try after removing a stale lock
            try:
                fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
            except FileExistsError:
                holder = self.holder()
                if holder is None:
                    continue  # released meanwhile
                if not self._stale(holder):
                    raise LockHeld(_describe_holder(self.path, holder)) from None
                self.path.unlink(missing_ok=True)
                continue
            try:
                os.write(fd, body)
                os.fsync(fd)
            finally:
                os.close(fd)
            self.mine = body
            return
        raise LockHeld(_describe_holder(self.path, self.holder() or {}))

    def release(self) -> None:
        if self.mine is not None:
            with contextlib.suppress(OSError):
                if self.path.read_bytes() == self.mine:
                    self.path.unlink()
            self.mine = None

    def __enter__(self) -> RunLock:
        self.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


def _describe_holder(path: Path, holder: dict[str, Any]) -> str:
    at = holder.get("at")
    since = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(at / 1000)) if at else "?"
    return (
        f"another retrain holds {path} (pid {holder.get('pid', '?')} on host "
        f"{holder.get('host', '?')}, since {since}); it is stale after --lock-timeout or "
        "when that process is gone"
    )


RUN_MODEL_DIR = "model"  # where `gru4stream train --out RUN_DIR` puts the run's artifact


def artifact_in(path: str | Path) -> Path:
    """An artifact directory as given, or the one inside a training run directory
    (RUN_DIR/model), so `--model RUN_DIR` works wherever `--model ARTIFACT_DIR` does."""
    path = Path(path)
    if not (path / MANIFEST).is_file() and (path / RUN_MODEL_DIR / MANIFEST).is_file():
        return path / RUN_MODEL_DIR
    return path


def resolve_model(spec: str, registry: Registry | None = None) -> Path:
    """A model given as a directory (an artifact's or a training run's), or as a version name
    / "promoted" / "latest" in a registry."""
    path = artifact_in(spec)
    if (path / MANIFEST).is_file():
        return path
    if registry is None:
        raise ArtifactError(f"{spec}: not an artifact directory (no {MANIFEST}); no registry given")
    if spec == "promoted":
        version = registry.promoted()
        if version is None:
            raise ArtifactError(f"registry {registry.root}: no version promoted yet")
        return registry.path(version)
    if spec == "latest":
        version = registry.latest()
        if version is None:
            raise ArtifactError(f"registry {registry.root}: empty")
        return registry.path(version)
    if not is_version_name(spec):
        raise ArtifactError(
            f"{spec}: neither an artifact directory nor a version name in {registry.root}"
        )
    return registry.path(spec)


def _write_atomic(path: Path, data: bytes) -> None:
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _now_ms() -> int:
    return int(time.time() * 1000)
