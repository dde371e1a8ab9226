"""Does the music fit the picture? IMSM, CLAP scores, FAD, KL and the thesis' cosine / MAE,
for any set of systems over a MeLBench-style manifest, as one command.

Usage::

    python benchmarks/evaluate_music.py --manifest melbench.jsonl --out eval/melbench \\
        --system fp32=bundle:engines/small --system int4=bundle:engines/small-int4 \\
        --system reference=reference:facebook/musicgen-small,openai/clip-vit-base-patch32

The manifest: JSON lines or CSV with ``image`` and optional ``id``, ``text`` (the item's
description / prompt) and ``audio`` (reference music); paths relative to the manifest.
Every system makes its music once (``benchmarks.eval_systems``: kinds, caching, resume),
then ``benchmarks.eval_measure`` scores it. Results: ``results.json`` (means and per-item
values), ``results.md`` (the papers' table layout) and ``results.png`` in ``--out``.
Each measuring model comes from a hub id or a local directory (docs/evaluation.md lists
the weights each metric needs and their licences); ``tiny`` builds random toy models (tests).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Sequence

from img2music.basics.cli_help import DefaultsHelpFormatter
from img2music.basics.errors import Img2MusicError, run_cli, setup_logging
from img2music.basics.models import DEFAULT_CLIP
from img2music.benchmarks.eval_models import DEFAULT_CLAP, DEFAULT_CLASSIFIER, DEFAULT_ENCODEC
from img2music.benchmarks.eval_systems import KINDS, GenerationSettings, Item, SystemSpec
from img2music.runtime.cli.arguments import add_sampling_arguments, positive, positive_float
from img2music.training.text_models import DEFAULT_CAPTIONER, DEFAULT_LLM

FAD_MODELS = ("clap", "encodec")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="evaluate_music.py", formatter_class=DefaultsHelpFormatter,
                                description="IMSM, CLAP, FAD, KL and cosine / MAE for image-to-music systems.")
    p.add_argument("--manifest", required=True, help="JSONL or CSV: image, optional id, text, audio")
    p.add_argument("--system", action="append", required=True, metavar="NAME=KIND:TARGET",
                   help="a system to evaluate; repeat. Kinds: " + "; ".join(f"{k} ({v})" for k, v in KINDS.items()))
    p.add_argument("--out", required=True, help="directory for the music, caches and results (reused to resume)")
    p.add_argument("--limit", type=positive(int), default=None, help="only the manifest's first N items")
    g = p.add_argument_group("generation")
    g.add_argument("--seconds", type=positive_float, default=10.0, help="music per item, in seconds")
    add_sampling_arguments(g, seed_help="base seed (each item adds a number fixed by its id)")
    g.add_argument("--greedy", action="store_true", help="argmax decoding instead of sampling")
    g.add_argument("--prompt-weight", type=float, default=1.0, help="bundle+text systems: the text's weight (0-10)")
    g.add_argument("--threads", type=positive(int), default=None, help="CPU threads for onnxruntime (default: all)")
    g.add_argument("--provider", choices=("cpu", "cuda", "tensorrt"), default="cpu",
                   help="where bundles run (cuda/tensorrt: fp16 bundles, onnxruntime-gpu)")
    g.add_argument("--captioner", default=DEFAULT_CAPTIONER, help="caption systems: BLIP-2 hub id or directory")
    g.add_argument("--llm", default=DEFAULT_LLM, help="caption+llm systems: instruction LLM hub id or directory")
    m = p.add_argument_group("measuring models (hub ids or local directories; 'tiny': random toy models)")
    m.add_argument("--clip", default=DEFAULT_CLIP, help="CLIP for IMSM and CLAP image relevance")
    m.add_argument("--clap", default=DEFAULT_CLAP, help="CLAP for IMSM, CLAP scores and FAD (clap)")
    m.add_argument("--classifier", default=DEFAULT_CLASSIFIER,
                   help="audio classifier for KL (transformers audio classification); 'none' skips KL")
    m.add_argument("--fad-model", action="append", choices=FAD_MODELS + ("none",), default=None,
                   help="FAD embeddings; repeat for several (default: clap)")
    m.add_argument("--encodec", default=DEFAULT_ENCODEC, help="EnCodec for --fad-model encodec")
    m.add_argument("--texts", default=None, metavar="FILE",
                   help="the text set IMSM and CLAP image relevance rank (one per line; default: the manifest's "
                        "texts when it has 2 or more, else the prompt bank's directives)")
    m.add_argument("--device", default="cpu", help="torch device for the measuring and reference models")
    p.add_argument("--no-progress", action="store_true", help="hide the progress bars")
    p.add_argument("-v", "--verbose", action="store_true", help="log details")
    return p


def load_manifest(path: str, limit: int | None = None) -> list[Item]:
    """Items from JSON lines or CSV (``basics.manifest``); every image and reference audio
    checked up front."""
    from img2music.basics.manifest import file_safe_id, read_manifest

    rows = read_manifest(path, file_columns=("image", "audio"))
    rows = rows[:limit] if limit else rows
    items, problems, seen = [], [], set()
    for n, row in enumerate(rows, 1):
        item_id = file_safe_id(row.get("id") or Path(row["image"]).stem)
        if item_id in seen:
            problems.append(f"item {n}: id {item_id!r} repeats (give each item its own 'id')")
        seen.add(item_id)
        items.append(Item(item_id, row["image"], (str(row.get("text") or "")).strip() or None, row.get("audio")))
    problems += _unreadable(items)
    if problems:
        more = f" (and {len(problems) - 5} more)" if len(problems) > 5 else ""
        raise Img2MusicError(f"manifest {path}: " + "; ".join(problems[:5]) + more)
    return items


def _unreadable(items: list[Item]) -> list[str]:
    import soundfile

    from img2music.runtime.pipeline.preprocess import load_image

    problems = []
    for item in items:
        try:
            load_image(item.image)
        except Img2MusicError as exc:
            problems.append(f"{item.id}: {exc}")
        if item.audio:
            try:
                soundfile.info(item.audio)
            except (RuntimeError, OSError):
                problems.append(f"{item.id}: cannot read reference audio {item.audio}")
    return problems


def text_set(path: str | None, items: list[Item]) -> tuple[list[str], str]:
    if path:
        p = Path(path)
        if not p.is_file():
            raise Img2MusicError(f"--texts file not found: {path}")
        texts = [line.strip() for line in p.read_text(encoding="utf-8").splitlines() if line.strip()]
        if len(texts) < 2:
            raise Img2MusicError(f"--texts {path}: give at least 2 texts (one per line)")
        return texts, f"--texts {path}"
    texts = list(dict.fromkeys(item.text for item in items if item.text))
    if len(texts) >= 2:
        return texts, "the manifest's texts"
    from img2music.basics.prompt_bank import load_directives

    return load_directives(), "the prompt bank's directives"


def load_meters(args):
    from img2music.benchmarks.eval_measure import Meters
    from img2music.benchmarks.eval_models import (
        load_clap_scorer,
        load_classifier,
        load_clip_scorer,
        load_encodec_embedder,
    )

    fad = [] if args.fad_model == ["none"] else list(dict.fromkeys(args.fad_model or ["clap"]))
    if "none" in fad:
        raise Img2MusicError("--fad-model none cannot be combined with other FAD models")
    clap = load_clap_scorer(args.clap, args.device)
    embedders = {name: clap if name == "clap" else load_encodec_embedder(args.encodec, args.device) for name in fad}
    classifier = None if args.classifier == "none" else load_classifier(args.classifier, args.device)
    return Meters(load_clip_scorer(args.clip, args.device), clap, classifier, embedders)


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    setup_logging(args.verbose)
    from img2music.runtime.generation.conditioning import check_prompt_weight
    from img2music.runtime.generation.sampling import SamplingConfig

    check_prompt_weight(args.prompt_weight)
    specs = [SystemSpec.parse(s) for s in args.system]
    names = [s.name for s in specs]
    if len(set(names)) != len(names):
        raise Img2MusicError(f"two systems share a name: {', '.join(sorted({n for n in names if names.count(n) > 1}))}")
    items = load_manifest(args.manifest, args.limit)
    from img2music.benchmarks.eval_systems import check_texts

    for spec in specs:
        check_texts(spec, items)
    texts, text_source = text_set(args.texts, items)
    sampling = SamplingConfig(guidance_scale=args.guidance_scale, temperature=args.temperature, top_k=args.top_k,
                              top_p=args.top_p, seed=args.seed, greedy=args.greedy)
    settings = GenerationSettings(args.seconds, sampling, args.prompt_weight, args.threads, args.provider,
                                  args.captioner, args.llm, args.device)
    out = Path(args.out)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise Img2MusicError(f"cannot create --out {args.out}: {exc.strerror or exc}") from None

    from tqdm import tqdm

    def progress(iterable, **kw):
        return tqdm(iterable, disable=args.no_progress, file=sys.stderr, **kw)

    print(f"{len(items)} items, {len(specs)} systems, {args.seconds:g} s each; loading the measuring models ...")
    meters = load_meters(args)  # before generating: a missing model fails in seconds, not after hours
    from img2music.benchmarks.eval_systems import generate

    caches = {spec.name: generate(spec, items, settings, out, progress) for spec in specs}
    result = measure_all(specs, caches, items, meters, texts, out, progress)
    from img2music.benchmarks.eval_report import chart, markdown

    result.update(manifest=args.manifest, seconds=args.seconds,
                  texts={"source": text_source, "count": len(texts)},
                  models={"clip": args.clip, "clap": args.clap, "classifier": args.classifier,
                          "encodec": args.encodec if "encodec" in meters.fad else None})
    (out / "results.json").write_text(json.dumps(result, indent=2))
    table = markdown(result)
    (out / "results.md").write_text(table)
    chart(result, out / "results.png")
    print(table, end="")
    print(f"results in {out}/results.json, results.md and results.png")
    return 0


def measure_all(specs, caches, items, meters, texts, out: Path, progress) -> dict:
    from img2music.benchmarks.eval_measure import AudioFeatures, measure_system

    image_emb = meters.clip.images([item.image for item in items])
    text_emb = {"clip": meters.clip.texts(texts), "clap": meters.clap.texts(texts)}
    with_audio = {item.id: Path(item.audio) for item in items if item.audio}
    reference = AudioFeatures(meters, with_audio, out / "reference_embeddings") if with_audio else None
    rows = []
    for spec in specs:
        cache = caches[spec.name]
        wavs = {item.id: cache.wav(item) for item in items}
        infos = {item.id: cache.info(item) for item in items}
        means, per_item = measure_system(meters, items, wavs, infos, image_emb, text_emb, reference, progress,
                                         spec.name)
        rows.append({"name": spec.name, "kind": spec.kind, "target": spec.target, "made_by": KINDS[spec.kind],
                     "metrics": means, "per_item": per_item,
                     "texts": {item.id: infos[item.id].get("prompt") for item in items}
                     if spec.kind.startswith("caption") else None})
    return {"items": len(items), "item_ids": [item.id for item in items], "reference_audio": len(with_audio),
            "systems": rows}


def cli() -> None:
    """Console-script entry point (img2music-evaluate-music)."""
    sys.exit(run_cli(main))


if __name__ == "__main__":
    cli()
