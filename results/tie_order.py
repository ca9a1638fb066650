"""Does the order of same-second ratings move the `rechorus` preset's sampled figures?

ReChorus's own MovieLens preprocessing sorts ratings by (time, user, item) before its
leave-one-out split, so ratings a user gave within one second come in ascending item id. The
`movielens-1m` files here carry no timestamps, so that order cannot be rebuilt for them;
MovieLens-100K has its timestamps (about half of a user's consecutive ratings share a
second), so it can be split both ways. This trains the `rechorus` preset (history-window
mode, early stopping on validation NDCG@5) on each order and tests it under the sampled
protocol (99 negatives, the last 20 items as history).

    python results/tie_order.py --threads 2            # about 20 minutes on 2 cores
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from batch_training.config import load_preset  # noqa: E402
from batch_training.options import SplitOptions  # noqa: E402
from batch_training.pipeline import PipelineOptions, TrainingPipeline  # noqa: E402
from batch_training.splits import split_leave_one_out  # noqa: E402
from readers.columns import ClickLog, Sequences  # noqa: E402
from readers.movielens import read_movielens_100k  # noqa: E402

ORDERS = {
    "file order (this project)": "file",
    "item id (ReChorus)": "item",
}


def ordered(log: ClickLog, ties: str) -> Sequences:
    """Per-user sequences by time, same-second ratings in file order or by item id."""
    if ties == "item":
        order = np.lexsort((log.item_ids.astype(np.int64), log.timestamps))
        log = ClickLog(log.session_ids[order], log.item_ids[order], log.timestamps[order])
    return log.to_sequences()


def ascending_share(seqs: Sequences) -> tuple[float, float]:
    """Shares of a user's consecutive pairs that ascend in item id and that share a second."""
    items = seqs.item_ids.astype(np.int64)
    same_user = np.ones(seqs.n_clicks - 1, dtype=bool)
    same_user[seqs.offsets[1:-1] - 1] = False  # a pair across two users is not a pair
    up = (np.diff(items) > 0)[same_user]
    tie = (np.diff(seqs.timestamps) == 0)[same_user]
    return float(up.mean()), float(tie.mean())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--epochs", type=int, help="override the preset's 200 (a quick look)")
    parser.add_argument("--seed", type=int, help="training seed (default: the preset's, 42)")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    overrides: dict[str, int] = {}
    if args.epochs is not None:
        overrides["n_epochs"] = args.epochs
    if args.seed is not None:
        overrides["seed"] = args.seed
    log = read_movielens_100k()
    print(
        "| same-second ratings | pairs ascending | pairs in one second | best epoch "
        "| HR@5 | HR@10 | NDCG@5 | NDCG@10 |"
    )
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    for label, ties in ORDERS.items():
        seqs = ordered(log, ties)
        up, tie = ascending_share(seqs)
        split = split_leave_one_out("movielens-100k", seqs, SplitOptions())
        options = PipelineOptions(
            device="cpu", progress=False, protocols=("sampled",), history_window=20, validate=True
        )
        trained = TrainingPipeline(split, load_preset("rechorus", **overrides), options).fit()
        m = trained.test.metrics["sampled"]
        print(
            f"| {label} | {up:.3f} | {tie:.3f} | {trained.result.best_epoch} "
            f"| {m['hr@5']:.4f} | {m['hr@10']:.4f} | {m['ndcg@5']:.4f} | {m['ndcg@10']:.4f} |",
            flush=True,
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
