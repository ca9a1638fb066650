"""The arrows between the parts (DESIGN.md): the leaf packages stay leaves.

`scoring`, `kafka_io` and `readers` import only `schemas` and their libraries: never the Faust app
(`stream_app`, faust), nor training (`batch_training`, torch). Each package is imported in a
fresh interpreter, so what another test imported cannot hide a wrong arrow.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
FORBIDDEN = ("stream_app", "batch_training", "faust", "torch")


def _loaded_after_importing(package: str) -> set[str]:
    """Top-level module names present in sys.modules after importing every module of it."""
    code = (
        "import importlib, pkgutil, sys\n"
        f"import {package}\n"
        f"for m in pkgutil.walk_packages({package}.__path__, '{package}.'):\n"
        "    importlib.import_module(m.name)\n"
        "print('\\n'.join(sorted({name.split('.')[0] for name in sys.modules})))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True
    )
    return set(out.stdout.split())


@pytest.mark.parametrize("package", ["scoring", "kafka_io", "readers"])
def test_leaf_packages_import_neither_the_stream_app_nor_training(package):
    loaded = _loaded_after_importing(package)
    assert package in loaded
    assert not loaded & set(FORBIDDEN), sorted(loaded & set(FORBIDDEN))
