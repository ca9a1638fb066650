"""Which model artifacts a worker agrees to load.

Anyone who can write to `model-updates` can announce any directory, and the announced
checksum only proves that the manifest did not change since it was taken. So:

- with `--registry ROOT`, the worker loads only ROOT/<version>, for a version the registry
  has promoted at some time (`Registry.was_promoted`): the announced location must resolve
  (symlinks and `..` followed) to exactly that directory, which must not be a symlink itself;
- with `--model-key-file`, every announcement needs a valid HMAC signature
  (schemas/signing.py) made with the same key;
- in every case an announced artifact is read without following symlinks, each file once,
  and the verified bytes are the bytes loaded (schemas.artifact.read_artifact).

A refusal is an ArtifactError whose `reason` is one of schemas.artifact.REFUSAL_REASONS.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from schemas.artifact import ArtifactError
from schemas.events import ModelUpdate
from schemas.registry import Registry, is_version_name
from schemas.signing import read_key_file, verify_update


@dataclass(frozen=True)
class TrustPolicy:
    registry: Registry | None = None  # None: any directory (a worker given --model DIR only)
    key: bytes | None = field(default=None, repr=False)  # never printed

    def check_signature(self, update: ModelUpdate) -> None:
        if self.key is None:
            return
        why = verify_update(update, self.key)
        if why is not None:
            raise ArtifactError(f"announcement of {update.version!r}: {why}", "signature")

    def registry_dir(self, path: Path, version: str | None = None) -> tuple[Path, str]:
        """(ROOT/<version>, version) when `path` is that directory of a promoted version.

        `version` is the announced one; without it (the model given at start) the
        directory's name is the version.
        """
        assert self.registry is not None
        root = self.registry.root.resolve()
        name = path.name if version is None else version
        if not is_version_name(name):
            raise ArtifactError(
                f"{path}: {name!r} is not a version of registry {root}", "outside_registry"
            )
        expected = root / name
        if os.path.islink(expected):
            raise ArtifactError(
                f"{expected}: is a symbolic link; registry versions must be real directories",
                "symlink",
            )
        try:
            resolved = path.resolve()
        except (OSError, RuntimeError) as exc:  # RuntimeError: a symlink loop
            raise ArtifactError(f"{path}: cannot resolve: {exc}") from None
        if resolved != expected:
            where = "inside" if resolved.is_relative_to(root) else "outside"
            raise ArtifactError(
                f"{path}: resolves to {resolved} ({where} the registry), not {expected}: "
                f"only registry versions are loaded",
                "outside_registry",
            )
        if not self.registry.was_promoted(name):
            raise ArtifactError(
                f"{expected}: {name} was never promoted in registry {root} (a candidate the "
                f"gate rejected needs `gru4stream publish {name} --registry ROOT --force`)",
                "not_promoted",
            )
        return expected, name


def trust_policy(registry: str | None, model_key_file: str | None) -> TrustPolicy:
    """The worker's policy from its options; KeyFileError for an unusable key file."""
    return TrustPolicy(
        registry=Registry(registry) if registry else None,
        key=read_key_file(model_key_file) if model_key_file else None,
    )
