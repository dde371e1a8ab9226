"""The music evaluation's outputs: a markdown table laid out like the papers' tables and a PNG chart."""

from __future__ import annotations

from pathlib import Path

COLUMNS = {
    "fad_clap": ("FAD (CLAP)", "lower"),
    "fad_encodec": ("FAD (EnCodec)", "lower"),
    "kl": ("KL", "lower"),
    "clap_text": ("CLAP text", "higher"),
    "clap_image": ("CLAP image", "higher"),
    "imsm": ("IMSM", "higher"),
    "cosine": ("cosine", "higher"),
    "mae": ("MAE", "lower"),
}
"""Metric key -> (column title, which way is better), in the papers' order: quality, then relevance, then latent."""

ARROWS = {"lower": "↓", "higher": "↑"}


def shown_metrics(rows: list[dict]) -> list[str]:
    """Metrics that at least one system has a value for."""
    return [key for key in COLUMNS if any(row["metrics"].get(key) is not None for row in rows)]


def markdown(result: dict) -> str:
    rows = result["systems"]
    keys = shown_metrics(rows)
    head = ["system", "made by"] + [f"{COLUMNS[k][0]} {ARROWS[COLUMNS[k][1]]}" for k in keys]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for row in rows:
        cells = [row["name"], row["made_by"]]
        cells += ["–" if row["metrics"].get(k) is None else f"{row['metrics'][k]:.4g}" for k in keys]
        lines.append("| " + " | ".join(cells) + " |")
    m = result["models"]
    notes = [
        "",
        f"{result['items']} items from `{result['manifest']}`, {result['seconds']:g} s of music each; "
        f"reference audio for {result['reference_audio']} items.",
        f"CLIP `{m['clip']}`, CLAP `{m['clap']}`, classifier `{m['classifier']}`"
        + (f", EnCodec `{m['encodec']}`" if m.get("encodec") else "") + ".",
        f"Text set for IMSM / CLAP image: {result['texts']['count']} texts ({result['texts']['source']}).",
    ]
    return "\n".join(lines + notes) + "\n"


def chart(result: dict, path: Path) -> None:
    """One panel per metric, one bar per system."""
    import matplotlib

    matplotlib.use("Agg")  # files only, no display
    import matplotlib.pyplot as plt

    rows = result["systems"]
    keys = shown_metrics(rows)
    if not keys:
        return
    cols = min(4, len(keys))
    grid = (len(keys) + cols - 1) // cols
    fig, axes = plt.subplots(grid, cols, figsize=(2.8 * cols + 0.5, 3.2 * grid), squeeze=False)
    for ax in axes.flat[len(keys):]:
        ax.set_visible(False)
    names = [row["name"] for row in rows]
    for ax, key in zip(axes.flat, keys):
        values = [row["metrics"].get(key) for row in rows]
        ax.bar(range(len(rows)), [v if v is not None else 0.0 for v in values], color="tab:blue")
        ax.set_xticks(range(len(rows)), names, rotation=45, ha="right", fontsize=8)
        title, better = COLUMNS[key]
        ax.set_title(f"{title} {ARROWS[better]}", fontsize=9)
        ax.tick_params(axis="y", labelsize=8)
    fig.suptitle(f"{result['items']} items, {result['seconds']:g} s each", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
