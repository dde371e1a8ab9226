"""What the benchmark suite measures, shared by every backend."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field


@dataclass
class SuiteConfig:
    """Repeats, positions and lengths of the per-stage benchmark."""

    threads: int = 2
    """CPU threads for every backend (onnxruntime intra-op, torch)."""
    warmup: int = 2
    """Untimed calls before each timed stage."""
    repeats: int = 10
    """Timed calls per short stage (median and p90 are over these)."""
    positions: list[int] = field(default_factory=lambda: [16, 256, 1024, 1500])
    """Cached positions at which a decoder step is timed."""
    reprime_steps: int = 250
    """Tokens re-primed into a fresh cache when a window restarts (5 s of audio)."""
    e2e_repeats: int = 2
    """Repeats of the end-to-end runs (time to first audio, RTF)."""
    rtf_seconds: list[float] = field(default_factory=lambda: [10.0, 30.0])
    """Audio lengths whose real-time factor is measured."""
    eager_max_seconds: float = 30.0
    """Longest end-to-end run for the (slow) transformers baseline; longer ones are skipped."""

    def to_dict(self) -> dict:
        return asdict(self)


def stage_names(config: SuiteConfig) -> list[str]:
    names = ["preprocess", "clip_vision", "projector", "cross_kv"]
    names += [f"decoder_step@{p}" for p in config.positions]
    names += ["reprime_window", "encodec_1s", "time_to_first_audio"]
    return names


def benchmark_image():
    """A real photograph (skimage's astronaut, 512x512) as the input frame."""
    try:
        import skimage.data
    except ImportError as exc:
        from img2music.basics.errors import Img2MusicError

        raise Img2MusicError("the benchmark's photograph comes from scikit-image: pip install scikit-image") from exc
    from PIL import Image

    return Image.fromarray(skimage.data.astronaut())
