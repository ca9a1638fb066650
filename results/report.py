"""Collect the result JSON files of this folder into a markdown table and a comparison chart.

    python results/report.py            # prints the table, writes results/comparison.png

Training runs are the `metrics.json` files of `gru4stream train` (copied here as
`<run>.json`); baselines are the `--json` files of `gru4stream evaluate --baseline`.
"""

from __future__ import annotations

import shlex
from pathlib import Path

import orjson

HERE = Path(__file__).resolve().parent
DATASET_ORDER = ("movielens-1m", "amazon-grocery", "yelp", "diginetica")
FULL = ("recall@5", "recall@10", "recall@20", "mrr@20", "ndcg@10", "ndcg@20")
SAMPLED = ("hr@5", "hr@10", "ndcg@5", "ndcg@10")
# The seed paper's GRU4Rec (ReChorus implementation), sampled protocol.
PAPER = {
    "movielens-1m": {"hr@5": 0.70, "hr@10": 0.81, "ndcg@5": 0.55, "ndcg@10": 0.58},
    "amazon-grocery": {"hr@5": 0.34, "hr@10": 0.44, "ndcg@5": 0.25, "ndcg@10": 0.28},
}


def load_rows() -> list[dict]:
    rows = []
    for path in sorted(HERE.glob("*.json")):
        data = orjson.loads(path.read_bytes())
        source = data.get("data", {}).get("source", {})
        if "test" in data:  # a training run
            short = f"GRU4Rec\n{data['config']['loss']}"
            name = f"GRU4Rec {data['version']} ({data['config']['loss']}, {data['epochs_run']} ep.)"
            results = data["test"]
        elif "results" in data:  # gru4stream evaluate
            name = data.get("baseline") or f"GRU4Rec {data.get('version', '')}"
            short = name
            results = data["results"]
        else:
            continue
        command = data.get("command", [])
        rows.append(
            {
                "file": path.name,
                "dataset": source.get("dataset", source.get("file", "?")),
                "name": name,
                "short": short,
                "results": results,
                "command": shlex.join(command),
            }
        )
    order = {d: i for i, d in enumerate(DATASET_ORDER)}
    return sorted(rows, key=lambda r: (order.get(r["dataset"], 99), "GRU4Rec" not in r["name"]))


def markdown(rows: list[dict]) -> str:
    out = []
    for protocol, names in (("full", FULL), ("sampled", SAMPLED)):
        present = [r for r in rows if protocol in r["results"]]
        if not present:
            continue
        out.append(f"### {protocol} protocol\n")
        out.append("| dataset | model | " + " | ".join(names) + " | examples | command |")
        out.append("|" + " --- |" * (len(names) + 4))
        for r in present:
            m = r["results"][protocol]
            values = " | ".join(f"{m[n]:.4f}" for n in names)
            out.append(
                f"| {r['dataset']} | {r['name']} | {values} | {m['n_examples']} | "
                f"`{r['command']}` |"
            )
        if protocol == "sampled":
            for dataset, m in PAPER.items():
                values = " | ".join(f"{m[n]:.2f}" for n in names)
                out.append(f"| {dataset} | seed paper GRU4Rec | {values} | | (published) |")
        out.append("")
    return "\n".join(out)


def chart(rows: list[dict], path: Path) -> None:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    panels = []
    shown = (("sampled", ("hr@10", "ndcg@10")), ("full", ("recall@20", "mrr@20")))
    for dataset in DATASET_ORDER:
        for protocol, names in shown:
            group = [r for r in rows if r["dataset"] == dataset and protocol in r["results"]]
            if group:
                panels.append((dataset, protocol, names, group))
    if not panels:
        return
    ncols = min(3, len(panels))
    nrows = -(-len(panels) // ncols)
    fig = Figure(figsize=(4.6 * ncols, 3.8 * nrows), layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(nrows, ncols, squeeze=False).ravel()
    for ax in axes[len(panels) :]:
        ax.set_axis_off()
    for ax, (dataset, protocol, names, group) in zip(axes, panels, strict=False):
        labels = [r["short"] for r in group]
        series = [[r["results"][protocol][n] for r in group] for n in names]
        if protocol == "sampled" and dataset in PAPER:
            labels.append("paper")
            for s, n in zip(series, names, strict=True):
                s.append(PAPER[dataset][n])
        width = 0.8 / len(names)
        for k, (n, values) in enumerate(zip(names, series, strict=True)):
            xs = [i + (k - (len(names) - 1) / 2) * width for i in range(len(labels))]
            ax.bar(xs, values, width, label=n)
        ax.set_xticks(range(len(labels)), labels, rotation=20, fontsize=8)
        ax.set_title(f"{dataset}, {protocol}", fontsize=10)
        ax.legend(fontsize=8)
    fig.savefig(path, dpi=100)


def main() -> None:
    rows = load_rows()
    print(markdown(rows))
    chart(rows, HERE / "comparison.png")


if __name__ == "__main__":
    main()
