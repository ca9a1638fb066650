"""Presets load, and the leave-one-out preset is exactly what the published results used."""

from __future__ import annotations

import dataclasses

import pytest

from batch_training.config import apply_overrides, list_presets, load_preset


@pytest.mark.parametrize("name", list_presets())
def test_every_preset_loads(name):
    config = load_preset(name)
    assert config.layers and min(config.layers) > 0
    assert config.learning_rate > 0


def test_leave_one_out_preset_equals_the_results_overrides():
    preset = dataclasses.asdict(load_preset("leave-one-out-xe"))
    overridden = dataclasses.asdict(
        apply_overrides(
            load_preset("diginetica-xe"),
            [
                "layers=[128]",
                "batch_size=64",
                "dropout_p_embed=0.2",
                "dropout_p_hidden=0.2",
                "max_history=20",
            ],
        )
    )
    preset.pop("notes"), overridden.pop("notes")
    assert preset == overridden
