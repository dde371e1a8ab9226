"""The systems a music evaluation compares, and their music: made once, cached, resumable.

A system is ``NAME=KIND:TARGET`` (``--system`` of ``benchmarks/evaluate_music.py``):

===============  ==================================================================
``bundle``       image -> a bundle (any precision; one built with a trained projector
                 is the trained projector, with the prompt bank the zero-shot one)
``bundle+text``  image + the item's text as a prompt (``--prompt-weight``)
``text``         the item's text alone through the bundle (MusicGen text-to-music)
``reference``    the PyTorch reference pipeline: ``reference:PRESET`` or
                 ``reference:MUSICGEN,CLIP`` (hub ids or directories)
``caption``      BLIP caption of the image -> text alone through the bundle (the
                 thesis' first text-mediated baseline)
``caption+llm``  caption -> the LLM's musical description -> text alone (the second)
===============  ==================================================================

Every item's music goes to ``OUT/audio/NAME/ID.wav`` beside ``ID.json`` (seconds, seed,
directive or caption, the thesis' cosine / MAE), both written atomically, so a stopped
run resumes where it stopped and never makes a piece twice. ``OUT/audio/NAME/system.json``
records what made them; a run with other settings under the same name is refused.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from img2music.basics.errors import Img2MusicError
from img2music.runtime.generation.sampling import SamplingConfig
from img2music.training.text_models import DEFAULT_CAPTIONER, DEFAULT_LLM

log = logging.getLogger(__name__)

KINDS = {
    "bundle": "image -> bundle",
    "bundle+text": "image + item text -> bundle",
    "text": "item text -> bundle",
    "reference": "image -> PyTorch reference",
    "caption": "image -> caption -> bundle",
    "caption+llm": "image -> caption -> LLM -> bundle",
}
TEXT_KINDS = ("bundle+text", "text")
"""Kinds that need a text for every item."""
LATENT_KINDS = ("bundle", "reference")
"""Kinds whose image conditioning is scored against the item text's T5 encoding (the thesis' cosine / MAE)."""


@dataclass(frozen=True)
class SystemSpec:
    name: str
    kind: str
    target: str

    @classmethod
    def parse(cls, text: str) -> "SystemSpec":
        name, sep, rest = text.partition("=")
        kind, _, target = rest.partition(":")
        if not sep or not name or not kind:
            raise Img2MusicError(f"--system {text!r}: expected NAME=KIND:TARGET, e.g. int4=bundle:engines/small-int4")
        if not all(c.isalnum() or c in "-_.+" for c in name) or name.startswith("."):
            raise Img2MusicError(f"--system {text!r}: a name uses letters, digits and - _ . + only")
        if kind not in KINDS:
            raise Img2MusicError(f"--system {text!r}: unknown kind {kind!r} (one of {', '.join(KINDS)})")
        if not target:
            raise Img2MusicError(f"--system {text!r}: {kind} needs a target (a bundle directory or, for reference, "
                                 "a preset or MUSICGEN,CLIP)")
        if kind != "reference" and not Path(target, "manifest.json").is_file():
            raise Img2MusicError(f"--system {text!r}: {target} is not an engine bundle (no manifest.json)")
        return cls(name, kind, target)


@dataclass(frozen=True)
class Item:
    """One manifest row (paths already resolved)."""

    id: str
    """File-safe name: the music is ``ID.wav``."""
    image: str
    text: str | None = None
    """The item's description / prompt (CLAP text, text kinds, the thesis' target)."""
    audio: str | None = None
    """Reference music (FAD, KL)."""


@dataclass(frozen=True)
class GenerationSettings:
    """How every system makes its music (the same for all, so they compare)."""

    seconds: float
    sampling: SamplingConfig
    prompt_weight: float = 1.0
    """bundle+text: the text's weight against the image."""
    threads: int | None = None
    """onnxruntime CPU threads (None: all cores)."""
    provider: str = "cpu"
    captioner: str = DEFAULT_CAPTIONER
    llm: str = DEFAULT_LLM
    device: str = "cpu"
    """torch device of the reference pipeline and the caption models."""

    def sampling_for(self, item: Item) -> SamplingConfig:
        """Each item its own seed, fixed by its id, the same for every system (as batch generation)."""
        from img2music.runtime.pipeline.batch import item_seed

        return replace(self.sampling, seed=item_seed(self.sampling.seed, item.id))

    def record(self, spec: SystemSpec) -> dict:
        """What decides the music of ``spec``: a change means other music."""
        out = {"kind": spec.kind, "target": spec.target, "seconds": self.seconds, "sampling": asdict(self.sampling)}
        if spec.kind == "bundle+text":
            out["prompt_weight"] = self.prompt_weight
        if spec.kind.startswith("caption"):
            out["captioner"] = self.captioner
        if spec.kind == "caption+llm":
            out["llm"] = self.llm
        return out


class AudioCache:
    """``OUT/audio/NAME``: one WAV + JSON per item, and ``system.json``."""

    def __init__(self, out: Path, spec: SystemSpec, record: dict) -> None:
        self.root = out / "audio" / spec.name
        self.root.mkdir(parents=True, exist_ok=True)
        meta = self.root / "system.json"
        if meta.is_file():
            old = json.loads(meta.read_text())
            if old != record:
                raise Img2MusicError(
                    f"{self.root} holds music made with {json.dumps(old)}; this run asks for {json.dumps(record)}: "
                    "give the system another name, another --out, or delete that directory")
        else:
            _atomic_write_text(meta, json.dumps(record, indent=2))

    def wav(self, item: Item) -> Path:
        return self.root / f"{item.id}.wav"

    def done(self, item: Item) -> bool:
        return self.wav(item).is_file() and (self.root / f"{item.id}.json").is_file()

    def write(self, item: Item, audio: np.ndarray, rate: int, info: dict) -> None:
        import soundfile

        part = self.root / f".{item.id}.part.wav"
        soundfile.write(part, audio, rate, subtype="FLOAT")
        os.replace(part, self.wav(item))
        _atomic_write_text(self.root / f"{item.id}.json", json.dumps(info, indent=2))

    def info(self, item: Item) -> dict:
        return json.loads((self.root / f"{item.id}.json").read_text())


def generate(spec: SystemSpec, items: Sequence[Item], settings: GenerationSettings, out: Path,
             progress: Callable = lambda it, **kw: it) -> AudioCache:
    """Make the music ``spec`` has not made yet for ``items``; returns its cache."""
    check_texts(spec, items)
    cache = AudioCache(out, spec, settings.record(spec))
    pending = [item for item in items if not cache.done(item)]
    if not pending:
        log.info("%s: all %d pieces cached", spec.name, len(items))
        return cache
    make = _maker(spec, settings, out, pending)
    for item in progress(pending, desc=f"music {spec.name}", unit="piece"):
        audio, rate, info = make(item)
        cache.write(item, audio, rate, {"id": item.id, "seconds": round(len(audio) / rate, 4),
                                        "seed": settings.sampling_for(item).seed, **info})
    return cache


def check_texts(spec: SystemSpec, items: Sequence[Item]) -> None:
    """A text kind needs every item's text (checked before any system runs)."""
    missing = [item.id for item in items if not item.text] if spec.kind in TEXT_KINDS else []
    if missing:
        raise Img2MusicError(f"system {spec.name} ({spec.kind}) needs a text for every item; "
                             f"{len(missing)} have none: {', '.join(missing[:5])}")


def _maker(spec: SystemSpec, settings: GenerationSettings, out: Path, items: Sequence[Item]):
    """item -> (audio (S,) or (S, 2), rate, info) for one system; models loaded once."""
    from img2music.runtime.pipeline.preprocess import load_image

    if spec.kind == "reference":
        return _reference_maker(spec, settings)
    from img2music.runtime.pipeline.onnx_pipeline import OnnxPipeline

    pipeline = OnnxPipeline.load(spec.target, threads=settings.threads, provider=settings.provider)
    texts = _mediating_texts(spec, settings, out, items) if spec.kind.startswith("caption") else {}

    def make(item: Item):
        sampling = settings.sampling_for(item)
        info: dict = {}
        if spec.kind in ("bundle", "bundle+text"):
            image = load_image(item.image)
            prompt = item.text if spec.kind == "bundle+text" else None
            result = pipeline([image], settings.seconds, sampling, prompt=prompt,
                              prompt_weight=settings.prompt_weight if prompt else 1.0)
            info["directive"] = result.directives[0] if result.directives else None
            if spec.kind == "bundle" and item.text and pipeline.text is not None:
                cond = pipeline.condition([image])
                info.update(latent_scores(cond.conditioning, cond.mask, *pipeline.encode_text(item.text)))
        else:
            prompt = item.text if spec.kind == "text" else texts[item.id]
            result = pipeline(None, settings.seconds, sampling, prompt=prompt)
            info["prompt"] = prompt
        return result.audio[0], result.sample_rate, info

    return make


def _reference_maker(spec: SystemSpec, settings: GenerationSettings):
    from img2music.basics.models import load_models
    from img2music.basics.presets import PRESETS
    from img2music.runtime.pipeline.preprocess import load_image
    from img2music.runtime.pipeline.timing import StageTimer
    from img2music.runtime.torch_reference import ReferencePipeline

    if spec.target in PRESETS:
        models = load_models(preset=spec.target)
    else:
        musicgen, _, clip = spec.target.partition(",")
        models = load_models(musicgen=musicgen, clip=clip or None)
    pipeline = ReferencePipeline(models)

    def make(item: Item):
        image = load_image(item.image)
        result = pipeline([image], settings.seconds, settings.sampling_for(item))
        info = {"directive": result.directives[0] if result.directives else None}
        if item.text:
            cond = pipeline.condition([image], StageTimer())
            hidden, mask = pipeline.encode_text(item.text)
            info.update(latent_scores(cond.conditioning, cond.mask, hidden, mask))
        return result.audio[0], result.sample_rate, info

    return make


def latent_scores(conditioning, mask, text_hidden, text_mask) -> dict:
    """The thesis' Table 6.1 measures for one item: cosine and MAE between the image's
    conditioning (1, N, D) and the T5 encoding of the item's text (1, L, D), aligned to N
    tokens as training aligns its targets."""
    import torch

    from img2music.training.losses import align_targets, latent_terms

    pred = torch.as_tensor(np.asarray(conditioning, dtype=np.float32))
    n = pred.shape[1]
    target, target_mask = align_targets(torch.as_tensor(np.asarray(text_hidden, dtype=np.float32)),
                                        torch.as_tensor(np.asarray(text_mask)), n)
    terms = latent_terms(pred, target, target_mask)
    return {"cosine": round(1.0 - float(terms["latent_cos"]), 6), "mae": round(float(terms["latent_l1"]), 6)}


def _mediating_texts(spec: SystemSpec, settings: GenerationSettings, out: Path, items: Sequence[Item]) -> dict:
    """Captions (and LLM descriptions) for the items, cached in ``OUT/texts`` per model."""
    from img2music.runtime.pipeline.preprocess import load_image
    from img2music.training.text_models import load_captioner, load_llm

    captions = _TextCache(out, "captions", settings.captioner)
    todo = [item for item in items if item.id not in captions.values]
    if todo:
        captioner = load_captioner(settings.captioner, device=settings.device)
        for item in todo:
            captions.values[item.id] = captioner([load_image(item.image)])[0] or "music"
        captions.save()
    if spec.kind == "caption":
        return captions.values
    directives = _TextCache(out, "descriptions", f"{settings.captioner}+{settings.llm}")
    todo = [item for item in items if item.id not in directives.values]
    if todo:
        writer = load_llm(settings.llm, device=settings.device)
        for item in todo:
            directives.values[item.id] = writer([captions.values[item.id]])[0] or captions.values[item.id]
        directives.save()
    return directives.values


class _TextCache:
    def __init__(self, out: Path, what: str, model: str) -> None:
        tag = "".join(c if c.isalnum() or c in "-_." else "_" for c in model)
        self.path = out / "texts" / f"{what}-{tag}.json"
        self.values: dict[str, str] = json.loads(self.path.read_text()) if self.path.is_file() else {}

    def save(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        _atomic_write_text(self.path, json.dumps(self.values, indent=2))


def _atomic_write_text(path: Path, text: str) -> None:
    part = path.with_name(f".{path.name}.part")
    part.write_text(text)
    os.replace(part, path)
