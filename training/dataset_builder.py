"""Phase I's builder: :class:`BuildConfig` and :class:`Builder` (CLIP, captions, LLM directives, T5
targets, audio), step by step with a cache; the CLI is ``training/build_dataset.py``.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from img2music.basics.errors import Img2MusicError
from img2music.training.text_models import DEFAULT_CAPTIONER, DEFAULT_LLM

log = logging.getLogger(__name__)

class BatchLimit(Exception):
    """``--limit-batches`` reached: the run stops as if interrupted."""


@dataclass
class BuildConfig:
    input: str
    """Image folder or CSV/JSONL manifest."""
    out: str
    """Dataset directory (created; re-running resumes)."""
    preset: str | None = None
    """Random-weight MusicGen + CLIP preset instead of checkpoints."""
    musicgen: str | None = None
    """MusicGen hub id or directory (its T5 makes the targets, its EnCodec the codes)."""
    clip: str | None = None
    """CLIP hub id or directory (must be the runtime's CLIP)."""
    captioner: str = DEFAULT_CAPTIONER
    """BLIP-2 hub id or directory, or 'tiny'."""
    llm: str = DEFAULT_LLM
    """Instruction LLM hub id or directory, or 'tiny'."""
    prompt: str = "thesis"
    """Which user prompt the LLM gets (training/text_models.PROMPTS)."""
    no_llm: bool = False
    """BLIP-only ablation: the caption itself is the directive."""
    batch_size: int = 16
    """Items per batch in every step."""
    t5_tokens: int = 64
    """T5 targets are padded/truncated to this many tokens."""
    audio_seconds: float = 10.0
    """Paired audio is cropped/padded to this length before EnCodec."""
    generate_codes: float = 0.0
    """Seconds of codes generated from the T5 target for items without audio (0 = none)."""
    seed: int = 0
    """Split and generation seed."""
    device: str = "cpu"
    """torch device for every model."""
    limit_batches: int | None = None
    """Stop after this many new batches (simulates an interruption; resume tests)."""
    ray: str | None = None
    """Run every step on Ray: a cluster address, or 'local' to start one here (None: in-process)."""
    ray_workers: int | None = None
    """Ray actors per step (None: as many as the cluster's CPUs / GPUs hold)."""
    cpus_per_worker: float = 1.0
    """CPUs each Ray actor reserves (torch uses that many threads there)."""
    gpus_per_worker: float = 0.0
    """GPUs each Ray actor reserves (with --device cuda; fractions share a GPU)."""


class Builder:
    def __init__(self, config: BuildConfig, report: Callable[[str], None] | None = None,
                 remote: Callable[..., None] | None = None) -> None:
        """``remote(builder, step, batches, cache, on_batch)`` runs a step's batches elsewhere
        (``training.dataset_ray.run_step`` when ``config.ray`` is set; None: in this process)."""
        if config.ray and remote is None:
            raise Img2MusicError("a --ray build needs the Ray step runner (training.dataset_ray.run_step)")
        self.remote = remote
        self.c, self.report = config, report or log.info
        self.root = Path(config.out)
        self.batches_run = 0
        self._models = self._captioner = self._llm = None

    # models are loaded only when a step has work to do
    @property
    def models(self):
        if self._models is None:
            from img2music.basics.models import load_models

            self._models = load_models(self.c.preset, self.c.musicgen, self.c.clip)
            self._models.musicgen.to(self.c.device)
            self._models.clip.to(self.c.device)
        return self._models

    def run_step(self, name: str, items: list[dict], work: Callable[[list[dict]], tuple]) -> None:
        from tqdm import tqdm

        from img2music.training.dataset_store import StepCache

        cache = StepCache(self.root, name)
        done = cache.done()
        todo = [it for it in items if it["id"] not in done]
        self.report(f"{name}: {len(items)} items, {len(items) - len(todo)} cached, {len(todo)} to do")
        bs = self.c.batch_size
        batches = [todo[start: start + bs] for start in range(0, len(todo), bs)]
        limit = self.c.limit_batches
        with tqdm(total=len(todo), desc=name, unit="item", disable=not todo, leave=False) as bar:
            if self.remote is not None and batches:
                if limit is not None and self.batches_run >= limit:
                    raise BatchLimit
                start = self.batches_run

                def finished(count: int) -> None:  # batches finish in any order on the cluster
                    self.batches_run += 1
                    bar.update(count)
                    if limit is not None and self.batches_run >= limit and self.batches_run - start < len(batches):
                        raise BatchLimit

                self.remote(self, name, batches, cache, finished)
            else:
                for batch in batches:
                    if limit is not None and self.batches_run >= limit:
                        raise BatchLimit
                    tensors, records = work(batch)
                    cache.add([it["id"] for it in batch], tensors, records)
                    self.batches_run += 1
                    bar.update(len(batch))
        self.caches[name] = cache

    def step_work(self, name: str) -> Callable[[list[dict]], tuple]:
        """The function of one step: batch of items -> (tensors or None, records or None)."""
        return {"clip": self._clip, "captions": self._captions, "directives": self._directives, "t5": self._t5,
                "codes": self._codes}[name]

    def build(self) -> dict:
        from img2music.training.dataset_input import read_items, stratified_split
        from img2music.training.dataset_store import write_dataset

        items = read_items(self.c.input)
        self.root.mkdir(parents=True, exist_ok=True)
        self.caches = {}
        if self.c.ray:
            from img2music.basics.ray_cluster import connect

            connect(self.c.ray, verbose=log.isEnabledFor(logging.INFO))
        self.run_step("clip", items, self._clip)
        self.run_step("captions", items, self._captions)
        for it in items:
            it.update(self.caches["captions"].record(it["id"]))
        self.run_step("directives", items, self._directives)
        for it in items:
            it.update(self.caches["directives"].record(it["id"]))
        self.run_step("t5", items, self._t5)
        self.run_step("codes", items, self._codes)
        splits = stratified_split(items, self.c.seed)
        ids = [it["id"] for it in items]
        tensors = {}
        for step in ("clip", "t5", "codes"):
            tensors.update(self.caches[step].tensors(ids))
        out_items = [{k: it.get(k) for k in ("id", "image", "audio", "caption", "caption_source", "directive",
                                              "emotion", "genre")} | {"split": s} for it, s in zip(items, splits)]
        info = {"musicgen": self.c.musicgen, "clip": self.c.clip, "preset": self.c.preset,
                "captioner": self.c.captioner, "llm": None if self.c.no_llm else self.c.llm,
                "prompt": None if self.c.no_llm else self.c.prompt, "t5_tokens": self.c.t5_tokens,
                "audio_frames": int(tensors["audio_codes"].shape[2]), "seed": self.c.seed,
                "clip_dim": int(tensors["clip_embeds"].shape[1]), "cond_dim": int(tensors["t5_hidden"].shape[2]),
                "num_codebooks": int(tensors["audio_codes"].shape[1])}
        write_dataset(self.root, out_items, tensors, info)
        counts = {s: splits.count(s) for s in ("train", "val", "test")}
        self.report(f"dataset written to {self.root}: {len(items)} items, split {counts}")
        return counts

    # -- steps ----------------------------------------------------------------------
    def _clip(self, batch):
        import torch

        from img2music.runtime.pipeline.preprocess import load_image, preprocess_images

        pixels = preprocess_images([load_image(it["image"]) for it in batch], self.models.image_config)
        with torch.inference_mode():
            out = self.models.clip.get_image_features(pixel_values=torch.from_numpy(pixels).to(self.c.device))
        embeds = getattr(out, "pooler_output", out).float().cpu().numpy()  # (B, D_clip), as clip_vision.onnx
        return {"clip_embeds": embeds}, None

    def _captions(self, batch):
        from img2music.runtime.pipeline.preprocess import load_image
        from img2music.training.text_models import load_captioner

        need = [it for it in batch if not it.get("text")]
        captions = {}
        if need:
            if self._captioner is None:
                self._captioner = load_captioner(self.c.captioner, self.c.device)
            captions = dict(zip([it["id"] for it in need], self._captioner([load_image(it["image"]) for it in need])))
        return None, [{"caption": it["text"], "caption_source": "manifest"} if it.get("text")
                      else {"caption": captions[it["id"]], "caption_source": "captioner"} for it in batch]

    def _directives(self, batch):
        from img2music.training.text_models import load_llm

        if self.c.no_llm:
            return None, [{"directive": it["caption"]} for it in batch]
        if self._llm is None:
            self._llm = load_llm(self.c.llm, self.c.prompt, self.c.device)
        return None, [{"directive": d} for d in self._llm([it["caption"] for it in batch])]

    def _t5(self, batch):
        import torch

        m = self.models
        enc = m.t5_tokenizer([it["directive"] for it in batch], padding="max_length", truncation=True,
                             max_length=self.c.t5_tokens, return_tensors="pt").to(self.c.device)
        with torch.inference_mode():
            hidden = m.musicgen.text_encoder(**enc).last_hidden_state  # (B, L, D_t5)
        hidden = hidden * enc["attention_mask"][..., None]
        return {"t5_hidden": hidden.float().cpu().numpy(), "t5_mask": enc["attention_mask"].cpu().numpy()}, None

    def _codes(self, batch):
        import torch

        m = self.models
        frames = int(round(self.c.audio_seconds * m.frame_rate))
        k = m.num_codebooks
        codes = np.zeros((len(batch), k, frames), np.int64)
        mask = np.zeros((len(batch), frames), np.int64)
        with_audio = [i for i, it in enumerate(batch) if it.get("audio")]
        if with_audio:
            waves, lengths = zip(*(load_audio(batch[i]["audio"], m.sample_rate, frames * m.hop_length)
                                   for i in with_audio))
            x = torch.from_numpy(np.stack(waves))[:, None].to(self.c.device)  # (b, 1, T)
            with torch.inference_mode():
                out = m.musicgen.audio_encoder.encode(x).audio_codes[0]  # (b, K, frames)
            for row, i in enumerate(with_audio):
                codes[i] = out[row].cpu().numpy()
                mask[i, : -(-lengths[row] // m.hop_length)] = 1
        without = [i for i, it in enumerate(batch) if not it.get("audio")]
        if without and self.c.generate_codes > 0:
            codes, mask = self._generated(batch, without, codes, mask)
        return {"audio_codes": codes, "audio_mask": mask}, None

    def _generated(self, batch, rows, codes, mask):
        """Codes generated from the T5 target (the thesis' route when audio is missing)."""
        from img2music.runtime.generation.sampling import SamplingConfig
        from img2music.runtime.torch_reference import ReferencePipeline

        t5 = self.caches["t5"].tensors([batch[i]["id"] for i in rows])
        frames = min(int(round(self.c.generate_codes * self.models.frame_rate)), codes.shape[2])
        ref = ReferencePipeline(self.models, projector=lambda e: None)
        import torch

        out = ref.generate_codes(torch.from_numpy(t5["t5_hidden"]), torch.from_numpy(t5["t5_mask"]), frames,
                                 SamplingConfig(seed=self.c.seed))
        for row, i in enumerate(rows):
            codes[i, :, :frames] = np.asarray(out[row])
            mask[i, :frames] = 1
        return codes, mask


def load_audio(path: str, rate: int, samples: int) -> tuple[np.ndarray, int]:
    """Mono float32 at ``rate``, cropped or zero-padded to ``samples``; also the real length."""
    from img2music.runtime.audio.files import read_mono

    audio, sr = read_mono(path)
    if sr != rate:
        from img2music.runtime.audio.resampler import Resampler

        audio = Resampler(sr, rate)(audio, last=True)
    n = min(len(audio), samples)
    out = np.zeros(samples, np.float32)
    out[:n] = audio[:n]
    return out, n
