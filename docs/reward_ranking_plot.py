"""Draw ``docs/reward-ranking.png`` from ``clipstudio eval ranking --json`` reports: best-of-N pass rate against N
for each ranker, beside a random candidate and any-of-N (the most a ranker could pick), one panel per report.

    clipstudio eval ranking --model shapes-diffusion --guidance 3 --candidates 16 --prompts 100 \
        --json docs/reward-ranking/shapes-diffusion-w3.json      # and likewise for each panel
    python docs/reward_ranking_plot.py docs/reward-ranking/*.json -o docs/reward-ranking.png
"""
import argparse
import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def panel(ax, report: dict, title: str) -> None:
    ns = [int(n) for n in report["any_of_n"]]
    for name, rates in report["best_of_n"].items():
        auc = report["auc"][name]
        ax.plot(ns, list(rates.values()), marker="o", ms=3, label=f"{name} (AUC {auc:.2f})")
    ax.plot(ns, list(report["any_of_n"].values()), ls="--", color="black", label="any of N (ceiling)")
    ax.axhline(report["candidate_pass_rate"], ls=":", color="grey", label="a random candidate")
    ax.set_xscale("log", base=2)
    ax.set_xticks(ns, [str(n) for n in ns])
    ax.set_ylim(0.7, 1.01)
    ax.set_title(title, fontsize=9)
    ax.set_xlabel("N candidates")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=6, loc="lower right")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("reports", nargs="+")
    parser.add_argument("-o", "--output", default="docs/reward-ranking.png")
    args = parser.parse_args()
    reports = [json.loads(Path(p).read_text()) for p in args.reports]
    fig, axes = plt.subplots(1, len(reports), figsize=(3.6 * len(reports), 3.4), sharey=True, squeeze=False)
    for ax, report in zip(axes[0], reports):
        panel(ax, report, f"{report['model']}, w={report['diffuse'].get('guidance', 'default')}, "
                          f"{report['prompts']} prompts")
    axes[0, 0].set_ylabel("check pass rate of the pick")
    fig.tight_layout()
    fig.savefig(args.output, dpi=80)


if __name__ == "__main__":
    main()
