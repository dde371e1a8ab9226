"""Benchmark output: JSON (validated against results_schema.json), markdown, PNG chart."""

from __future__ import annotations

import json
from pathlib import Path

SCHEMA_PATH = Path(__file__).with_name("results_schema.json")


def validate(results: dict) -> None:
    """Raise ``jsonschema.ValidationError`` when results break the schema."""
    import jsonschema

    jsonschema.validate(results, json.loads(SCHEMA_PATH.read_text()))


def add_ratios(results: dict, reference: str | None) -> None:
    """ratio_vs_reference[stage] = reference median / backend median (> 1: faster than the reference)."""
    if reference is None or reference not in results["backends"]:
        return
    ref = results["backends"][reference]
    for name, backend in results["backends"].items():
        ratios = {}
        for stage, timing in backend["stages"].items():
            base = ref["stages"].get(stage)
            ratios[stage] = base["median_ms"] / timing["median_ms"] if base and timing["median_ms"] > 0 else None
        for key, rtf in backend["rtf"].items():
            base = ref["rtf"].get(key)
            ratios[f"rtf_{key}"] = base["rtf"] / rtf["rtf"] if base and rtf else None
        backend["ratio_vs_reference"] = ratios


def markdown(results: dict) -> str:
    m = results["machine"]
    backends = results["backends"]
    names = list(backends)
    lines = [
        f"Machine: {m['cpu']}, {results['config']['threads']} threads of {m['cores_available']} cores; "
        f"onnxruntime {m['versions'].get('onnxruntime', '-')}, torch {m['versions'].get('torch', '-')}. "
        "Median ms (p90) after warm-up; ratio = reference / backend.",
        "",
        "| stage | " + " | ".join(names) + " |",
        "|---|" + "---:|" * len(names),
    ]
    for stage in results["stage_names"]:
        cells = []
        for name in names:
            t = backends[name]["stages"].get(stage)
            ratio = backends[name].get("ratio_vs_reference", {}).get(stage)
            cell = f"{t['median_ms']:.1f} ({t['p90_ms']:.1f})" if t else "-"
            if ratio and abs(ratio - 1.0) > 1e-9:
                cell += f" {ratio:.1f}x"
            cells.append(cell)
        lines.append(f"| {stage} | " + " | ".join(cells) + " |")
    rtf_keys = sorted({k for b in backends.values() for k in b["rtf"]}, key=lambda k: float(k[:-1]))
    for key in rtf_keys:
        cells = []
        for name in names:
            r = backends[name]["rtf"].get(key)
            cells.append(f"{r['rtf']:.3f} ({r['wall_seconds']:.1f} s)" if r else "skipped")
        lines.append(f"| real-time factor, {key} of audio | " + " | ".join(cells) + " |")
    lines.append("| peak RSS (MiB) | " + " | ".join(f"{backends[n]['peak_rss_mb']:.0f}" for n in names) + " |")
    comp = results.get("thesis_comparison")
    if comp:
        text = results["text_pipeline"]
        p = text["parameters"]
        lines += [
            "",
            f"Text at inference (thesis comparison; random-weight stand-ins: captioner {p['captioner'] / 1e6:.0f}M, "
            f"LLM {p['llm'] / 1e6:.0f}M parameters), seconds to {comp['audio_seconds']:g} s of music, "
            "transformers eager:",
            "",
            "| pipeline | front end | MusicGen + EnCodec | total |",
            "|---|---:|---:|---:|",
            f"| direct: CLIP + projector | {comp['direct_front_seconds']:.2f} | {comp['musicgen_seconds']:.1f} | "
            f"{comp['direct_seconds']:.1f} |",
            f"| text-mediated: captioner + LLM + T5 | {comp['text_front_seconds']:.2f} | "
            f"{comp['musicgen_seconds']:.1f} | {comp['text_mediated_seconds']:.1f} |",
            "",
            "Stand-in stages (median ms): " + ", ".join(
                f"{k} {v['median_ms']:.0f}" for k, v in text["stages"].items()),
        ]
    return "\n".join(lines) + "\n"


def chart(results: dict, path: Path) -> None:
    """Per-stage medians per backend, grouped horizontal bars on a log axis."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    stages = results["stage_names"]
    names = list(results["backends"])
    fig, ax = plt.subplots(figsize=(9, 0.45 * len(stages) * max(1, len(names)) / 1.5 + 1.5))
    height = 0.8 / len(names)
    y = np.arange(len(stages))
    for i, name in enumerate(names):
        values = [results["backends"][name]["stages"].get(s, {}).get("median_ms", np.nan) for s in stages]
        ax.barh(y + i * height, values, height=height, label=name)
    ax.set_yticks(y + 0.4 - height / 2)
    ax.set_yticklabels(stages)
    ax.invert_yaxis()
    ax.set_xscale("log")
    ax.set_xlabel("median ms (log scale)")
    ax.set_title(f"img2music per-stage latency — {results['machine']['cpu']}, {results['config']['threads']} threads")
    ax.legend(loc="lower right", fontsize=8)
    ax.grid(axis="x", which="both", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
