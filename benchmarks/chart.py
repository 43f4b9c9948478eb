"""The per-request chart of docs/benchmarks.md: µs per request, a group of bars per scenario and database.

matplotlib is optional (``pip install matplotlib``); without it the
benchmark prints that the chart was skipped and goes on.
"""

from __future__ import annotations

from pathlib import Path

from .request_cost import MIN, OURS, SCENARIO_LABELS, SCENARIOS, SYSTEMS, BackendResult

COLORS = {
    "raw": "#b0b0b0",
    "min": "#4c78a8",
    "wsgi_dbsession": "#f58518",
    "Django": "#54a24b",
    "Beaker": "#b279a2",
}


def draw(results: list[BackendResult], path: Path) -> str:
    """Write the chart to ``path`` (SVG or PNG by its suffix); what happened, in one sentence."""
    try:
        import matplotlib
    except ImportError:
        return f"matplotlib is not installed: chart {path} skipped (pip install matplotlib)"
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    matplotlib.rcParams["svg.hashsalt"] = "wsgi_dbsession-benchmarks"  # stable ids between runs
    matplotlib.rcParams["svg.fonttype"] = "none"  # text stays text: a small SVG that diffs
    scenarios = SCENARIOS[1:]
    figure, axes = plt.subplots(
        1, len(results), figsize=(4.4 * len(results), 4.8), squeeze=False, sharey=True
    )
    width = 0.84 / len(SYSTEMS)
    for ax, result in zip(axes[0], results, strict=True):
        for index, system in enumerate(SYSTEMS):
            offsets = [group + (index - (len(SYSTEMS) - 1) / 2) * width for group in range(len(scenarios))]
            values = [result.micros[(scenario, system)] for scenario in scenarios]
            bars = ax.bar(offsets, values, width, label=system, color=COLORS[system])
            ax.bar_label(
                bars, labels=[f"{value:.0f}" for value in values], fontsize=6, padding=1, rotation=90
            )
        ax.set_xticks(
            range(len(scenarios)),
            [
                f"{SCENARIO_LABELS[scenario]}\n÷ min: {result.ratio(scenario, OURS, MIN):.2f}"
                for scenario in scenarios
            ],
            fontsize=8,
        )
        ax.set_yscale("log")
        ax.set_title(result.backend)
        ax.grid(axis="y", which="major", linewidth=0.4, alpha=0.5)
        ax.set_axisbelow(True)
        ax.spines[["top", "right"]].set_visible(False)
    axes[0][0].set_ylabel("µs per request (median, log scale)")
    charted = [result.micros[(s, system)] for result in results for s in scenarios for system in SYSTEMS]
    axes[0][0].set_ylim(min(charted) / 1.6, max(charted) * 3)
    figure.legend(
        *axes[0][0].get_legend_handles_labels(),
        loc="lower center",
        ncol=len(SYSTEMS),
        fontsize=8,
        frameon=False,
    )
    figure.suptitle(f"Per-request cost of a session (lower is better; ÷ min: {OURS} ÷ {MIN})", fontsize=11)
    figure.tight_layout(rect=(0, 0.06, 1, 1))
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, metadata={"Date": None} if path.suffix == ".svg" else None, dpi=110)
    plt.close(figure)
    return f"chart written to {path}"
