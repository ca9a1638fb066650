"""The scoring core: plain numpy and FAISS on a model artifact, the one scoring path.

`scoring.model` turns a verified artifact into a `ServingModel` (the batched GRU step);
`scoring.search` holds the scoring formula and the top-K search with seen-item exclusion.
The worker, replay, offline evaluation of an artifact and the retrain gate all call it.
A leaf package: it imports only `schemas` (and numpy, FAISS), never Faust, torch,
`stream_app` or `batch_training` (tests/test_layering.py).
"""

from scoring.model import ServingModel
from scoring.search import ServingOptions, pad_ragged, scores

__all__ = ["ServingModel", "ServingOptions", "pad_ragged", "scores"]
