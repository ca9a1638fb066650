"""`python -m stream_app ARGS...` is `gru4stream worker ARGS...`."""

import sys

from stream_app.cli import worker_main

sys.exit(worker_main(sys.argv[1:]))
