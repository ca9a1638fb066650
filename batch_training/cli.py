"""`gru4stream train` and `gru4stream evaluate`, one module each since the split by job:

- batch_training.cli_train     the train command (the training pipeline, a run directory)
- batch_training.cli_evaluate  the evaluate command (an artifact or a baseline on a split)
- batch_training.cli_args      what both share (data sources, protocols, table, errors)

This module keeps the entry points' old names for callers and scripts that import them.
"""

from __future__ import annotations

from batch_training.cli_args import RUN_MODEL_DIR, CliError, format_table, load_data
from batch_training.cli_evaluate import artifact_dir
from batch_training.cli_evaluate import main as evaluate_main
from batch_training.cli_train import main as train_main

__all__ = [
    "RUN_MODEL_DIR",
    "CliError",
    "artifact_dir",
    "evaluate_main",
    "format_table",
    "load_data",
    "train_main",
]
