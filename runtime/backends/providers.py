"""Backend selection, in one place: which execution provider and session class run a bundle.

``--provider`` (generate.py, live.py, the benchmarks):

- ``cpu``: ONNX Runtime's CPU provider for every graph; any bundle.
- ``cuda``: ONNX Runtime's CUDA provider for every graph; the decoder keeps its KV cache
  and cross K/V on the device (``OrtDecoderSession(device="cuda")``), only the logits
  cross to the host, and its step may replay as a CUDA graph. fp16 bundles only: the
  CUDA GroupQueryAttention kernel has no float32 (an fp32 decoder's attention would fall
  back to the CPU and copy the cache both ways every step), and the int8 cache and
  MatMulNBits weights of int8/int4 bundles are CPU formats.
- ``tensorrt``: ONNX Runtime's TensorRT provider for CLIP, the projector, cross_kv and
  EnCodec, from engines built on this machine and kept in the bundle
  (``build_engines.py --precision fp16 --tensorrt``); the decoder step stays on the CUDA
  provider as above, since TensorRT has no kernel for ONNX Runtime's in-place-cache
  attention. Engines built for another GPU or TensorRT release are refused.

A bundle or machine that does not fit is one clear error before anything loads.
NOT YET RUN ON A GPU: the ``cuda`` and ``tensorrt`` paths have been read against the
onnxruntime API only; what runs here is the ``cpu`` path and every refusal.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from img2music.basics.errors import Img2MusicError
from img2music.basics.graph_specs import GraphSpec
from img2music.basics.model_config import ModelConfig
from img2music.runtime.backends.ort_session import create_session, onnxruntime
from img2music.runtime.bundle.loading import Bundle, check_decoder_config, check_session
from img2music.runtime.bundle.manifest import OPTIONAL_GRAPHS, RUNTIME_GRAPHS, TEXT_GRAPH
from img2music.runtime.generation.decoder_session import DecoderSession

log = logging.getLogger(__name__)

PROVIDERS = ("cpu", "cuda", "tensorrt")
ORT_NAMES = {"cpu": "CPUExecutionProvider", "cuda": "CUDAExecutionProvider", "tensorrt": "TensorrtExecutionProvider"}
TENSORRT_GRAPHS = ("clip_vision", "projector", "cross_kv", "encodec_stream_front", "encodec_stream_back")
"""The graphs the TensorRT provider runs (the decoder step's attention needs ONNX Runtime's own kernels)."""
TENSORRT_MAX_IMAGES = 4
"""Images per call the TensorRT engines are built for (rows double under guidance)."""
TENSORRT_MAX_CHUNK_FRAMES = 300
"""Longest EnCodec chunk the TensorRT engines take (generate.py decodes 250 frames at a time)."""


@dataclass(frozen=True)
class SessionOptions:
    """How to run a bundle."""

    provider: str = "cpu"
    """cpu, cuda or tensorrt (see the module docstring)."""
    threads: int | None = None
    """Intra-op threads per CPU session (default: the cores this process may use)."""
    spinning: bool = True
    """Let ORT's CPU worker threads busy-wait between decoder steps (False when other threads need
    the cores); the other graphs never spin (:data:`SPINNING_GRAPHS`)."""
    cuda_graph: bool = True
    """GPU: replay the decoder step as a CUDA graph (``--no-cuda-graph``: plain runs)."""
    device_id: int = 0
    """GPU: the CUDA device."""
    encodec: str = "float32"
    """The streaming EnCodec front: float32 (equal to the full decode), int8 (the int8-LSTM variant)
    or auto (the faster here, measured: ``runtime.pipeline.encodec_choice``)."""
    encodec_chunk: int = 25
    """Code frames per EnCodec push that ``auto`` measures at (the live chunk)."""


@dataclass
class BundleSessions:
    """Every graph the runtime runs, ready."""

    graphs: dict
    """Graph name -> onnxruntime InferenceSession (clip_vision, projector, encodec_stream_*...)."""
    decoder: DecoderSession
    """decoder_step + cross_kv behind the decoder-session interface."""


def check_provider(bundle: Bundle, provider: str) -> None:
    """The provider exists in this onnxruntime, fits the bundle's precision and, for TensorRT,
    the bundle carries engines built for this GPU and TensorRT."""
    ort = onnxruntime()

    if provider not in PROVIDERS:
        raise Img2MusicError(f"unknown provider {provider!r}; choose one of {', '.join(PROVIDERS)}")
    if provider == "cpu":
        return
    if bundle.precision != "fp16":
        raise Img2MusicError(
            f"--provider {provider} runs fp16 bundles and {bundle.root} is {bundle.precision}: ONNX Runtime's CUDA "
            "attention has no float32 kernel and int8/int4 bundles are CPU formats. Build a GPU bundle with "
            "export/build_engines.py --precision fp16")
    needed = [ORT_NAMES[p] for p in ("cuda", provider)]
    missing = [name for name in needed if name not in ort.get_available_providers()]
    if missing:
        raise Img2MusicError(
            f"this onnxruntime lacks {', '.join(dict.fromkeys(missing))} (it has "
            f"{', '.join(ort.get_available_providers())}): install onnxruntime-gpu instead of onnxruntime "
            "(pip install 'img2music[gpu]'; on Jetson the wheel from NVIDIA's Jetson index)")
    if hasattr(ort, "preload_dlls"):  # CUDA/cuDNN from the nvidia-* wheels (torch's), where installed so
        ort.preload_dlls()
    if provider == "tensorrt":
        from img2music.runtime.backends.gpu_facts import engine_mismatch, tensorrt_facts

        recorded = bundle.manifest.provenance.tensorrt
        rebuild = "build them on this machine: export/build_engines.py --precision fp16 --tensorrt"
        if not recorded:
            raise Img2MusicError(f"{bundle.root} has no TensorRT engines; {rebuild}")
        why = engine_mismatch(recorded, tensorrt_facts())
        if why:
            raise Img2MusicError(f"the TensorRT engines in {bundle.root} were {why}; {rebuild}")


def graph_providers(bundle: Bundle, name: str, options: SessionOptions, cuda_graph: bool = False) -> list:
    """onnxruntime's provider list for one graph."""
    cpu = [ORT_NAMES["cpu"]]
    if options.provider == "cpu":
        return cpu
    cuda = (ORT_NAMES["cuda"], {"device_id": str(options.device_id)} | ({"enable_cuda_graph": "1"} if cuda_graph else {}))
    if options.provider == "cuda" or name not in TENSORRT_GRAPHS:
        return [cuda] + cpu
    return [(ORT_NAMES["tensorrt"], tensorrt_options(bundle, name, options)), cuda] + cpu


def tensorrt_options(bundle: Bundle, name: str, options: SessionOptions) -> dict:
    """TensorRT provider options: fp16, engines and timing cache in the bundle, one profile."""
    ranges = tensorrt_profile(bundle.graph(name).spec(name), bundle.model)
    shapes = {k: ",".join(f"{t}:{'x'.join(map(str, r[i]))}" for t, r in ranges.items()) for i, k in
              enumerate(("trt_profile_min_shapes", "trt_profile_opt_shapes", "trt_profile_max_shapes"))}
    # fp16 only where the bundle's graph is fp16: the projector and EnCodec stay float32 on
    # purpose (calibration.half_precision), and TensorRT would otherwise pick fp16 kernels there.
    fp16 = "1" if bundle.graph(name).precision == "fp16" else "0"
    return {"device_id": str(options.device_id), "trt_fp16_enable": fp16, "trt_engine_cache_enable": "1",
            "trt_engine_cache_path": str(bundle.root), "trt_timing_cache_enable": "1",
            "trt_timing_cache_path": str(bundle.root)} | (shapes if ranges else {})


def tensorrt_profile(spec: GraphSpec, model: ModelConfig, max_images: int = TENSORRT_MAX_IMAGES,
                     max_chunk: int = TENSORRT_MAX_CHUNK_FRAMES) -> dict:
    """{input: ((min), (opt), (max)) shapes} for every input with a dynamic axis.

    batch: guidance doubles the rows (1..2*max_images, opt 2); cond_len: 1..the projector's
    N tokens (the prompt bank pads to its longest directive) plus the longest text prompt
    where the bundle has one; frames: one EnCodec chunk;
    window: a chunk's code frames plus the first convolution's 3 + 3 context frames."""
    cond = model.conditioning.num_tokens
    longest = cond + (model.text.max_tokens if model.text is not None else 0)
    axes = {"batch": (1, 2, 2 * max_images), "cond_len": (1, cond, longest), "frames": (1, 50, max_chunk + 8),
            "window": (7, 56, max_chunk + 14)}
    ranges = {}
    for t in spec.inputs:
        if not any(isinstance(d, str) for d in t.shape):
            continue
        unknown = [d for d in t.shape if isinstance(d, str) and d not in axes]
        if unknown:
            raise Img2MusicError(f"{spec.name}.{t.name}: no TensorRT profile range for axis {unknown[0]!r}")
        ranges[t.name] = tuple(tuple(axes[d][i] if isinstance(d, str) else d for d in t.shape) for i in range(3))
    return ranges


OPENING_THREADS = 4
"""Sessions created at once: ONNX Runtime builds a session outside the GIL, so on two cores the
eight graphs of small-random int4 open in about half the time (a second of the first audio)."""


def open_sessions(bundle: Bundle, options: SessionOptions = SessionOptions(),
                  skip: tuple[str, ...] = ()) -> BundleSessions:
    """Sessions for a verified bundle (created concurrently), each checked against the I/O its
    manifest records; ``skip``: optional graphs not to open (an EnCodec front not chosen)."""
    from concurrent.futures import ThreadPoolExecutor

    from img2music.runtime.backends.ort_decoder import OrtDecoderSession

    check_provider(bundle, options.provider)
    cuda_graph = options.provider != "cpu" and options.cuda_graph
    optional = tuple(name for name in OPTIONAL_GRAPHS if name in bundle.manifest.graphs and options.provider == "cpu")
    names = [n for n in RUNTIME_GRAPHS + ((TEXT_GRAPH,) if bundle.model.text is not None else ()) + optional
             if n not in skip]
    with ThreadPoolExecutor(max_workers=OPENING_THREADS, thread_name_prefix="open-session") as pool:
        futures = {name: pool.submit(_session, bundle, name, options, cuda_graph and name == "decoder_step")
                   for name in names}
        graphs = {}
        for name, future in futures.items():
            try:
                graphs[name] = future.result()
            except Img2MusicError as exc:
                if not (cuda_graph and name == "decoder_step"):
                    raise
                # ORT refuses capture when a node would need a host-device copy; the build checks the
                # step graph for that (export.cuda_placement), so this is news: say it, do not hide it
                raise Img2MusicError(f"{exc}; the decoder step cannot run as a CUDA graph here: run with "
                                     "--no-cuda-graph (plain runs, slower) and report it") from None
    check_decoder_config(bundle, graphs["decoder_step"])
    decoder = OrtDecoderSession(graphs["decoder_step"], graphs["cross_kv"], bundle.model.decoder,
                                kv_scales=bundle.kv_scales(), device="cpu" if options.provider == "cpu" else "cuda",
                                cuda_graph=cuda_graph)
    return BundleSessions(graphs, decoder)


SPINNING_GRAPHS = ("decoder_step",)
"""The graphs whose sessions may busy-wait between runs. Spinning pays only for back-to-back runs
of one session (decoder steps); a session whose workers spin while another session runs steals
its cores: streamed EnCodec (two sessions, alternating, small-random, 25-frame chunks, 2 threads,
AVX-512 VNNI host) cost 195 ms per second of audio with both spinning, 97 with neither."""


def open_session(bundle: Bundle, name: str, options: SessionOptions = SessionOptions()):
    """One graph's session, as :func:`open_sessions` opens it (for a graph opened on first use)."""
    return _session(bundle, name, options, cuda_graph=False)


def _session(bundle: Bundle, name: str, options: SessionOptions, cuda_graph: bool):
    session = create_session(bundle.graph_path(name), threads=options.threads,
                             providers=graph_providers(bundle, name, options, cuda_graph),
                             spinning=options.spinning and name in SPINNING_GRAPHS)
    check_session(session, bundle.graph(name), name)
    return session
