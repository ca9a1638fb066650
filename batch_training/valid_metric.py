"""The validation metric: what early stopping and `gru4stream tune` maximise.

Kept apart from the pipeline (and free of torch) so that the command lines can check a
`--valid-metric` before loading any data.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass

# Names each protocol's evaluation reports (hr@k only under the sampled protocol).
METRIC_NAMES = {"full": ("recall", "mrr", "ndcg"), "sampled": ("hr", "recall", "mrr", "ndcg")}


@dataclass(frozen=True)
class ValidMetric:
    """What early stopping, and `gru4stream tune`, maximise on the validation set.

    Written `[PROTOCOL:]NAME@K`, e.g. "recall@20" (full ranking) or "sampled:hr@10" (the
    target among the validation set's sampled negatives). Choosing the metric a result is
    reported in keeps model selection on the same footing as the figure compared.
    """

    protocol: str  # "full" or "sampled"
    name: str  # recall, mrr, ndcg; or hr (sampled only)
    k: int

    @classmethod
    def parse(cls, text: str) -> ValidMetric:
        protocol, _, metric = text.strip().lower().rpartition(":")
        name, _, k = metric.partition("@")
        protocol = protocol or ("sampled" if name == "hr" else "full")
        if protocol not in METRIC_NAMES or name not in METRIC_NAMES[protocol]:
            known = ", ".join(f"{p}:{n}@K" for p, names in METRIC_NAMES.items() for n in names)
            raise ValueError(f"validation metric {text!r}: expected one of {known}")
        if not k.isdigit() or int(k) < 1:
            raise ValueError(f"validation metric {text!r}: K must be a whole number >= 1")
        return cls(protocol, name, int(k))

    @classmethod
    def argument(cls, text: str) -> ValidMetric:
        """argparse `type=`: a bad spec is a usage error that names what is accepted."""
        try:
            return cls.parse(text)
        except ValueError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None

    @property
    def key(self) -> str:
        """The name in the evaluation's result dict, e.g. "hr@10"."""
        return f"{self.name}@{self.k}"

    def __str__(self) -> str:
        # Full ranking is the default protocol, so its metrics keep their short names.
        return self.key if self.protocol == "full" else f"{self.protocol}:{self.key}"
