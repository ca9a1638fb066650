"""The `gru4stream` command: a thin entry point that hands each subcommand to its package."""
