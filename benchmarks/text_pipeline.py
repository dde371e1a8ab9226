"""The thesis comparison: the cost of "text at inference", measured.

The text-mediated pipeline captions the image (BLIP-2 in the thesis), rewrites the
caption into a musical directive with an instruction LLM (Llama 3.1 8B), encodes it
with T5 and then runs MusicGen. The direct pipeline (ours) replaces the first three
with CLIP + projector. Neither a BLIP-2-sized (3.9B) nor an 8B model fits a 2-core,
24 GiB CPU run beside MusicGen, so the stand-ins are the largest that do, with random
weights and real compute:

- captioner: BLIP-large's architecture (ViT-L/16 at 384 px + BERT-base text decoder,
  ~470M parameters), 20 caption tokens;
- LLM: Llama 3.2 1B's architecture (1.24B parameters), a 90-token prompt and 48 new
  tokens (the thesis asks for "two lines");
- T5: MusicGen's own text encoder on a 32-token directive.

``tiny`` stand-ins of the same architectures run in tests. Token counts are fixed
(``min_new_tokens``) so random weights cannot stop early and hide cost.
"""

from __future__ import annotations

from img2music.benchmarks.stats import peak_rss_mb, summarize_ms, time_calls

CAPTION_TOKENS = 20
PROMPT_TOKENS = 90
DIRECTIVE_TOKENS = 48
T5_TOKENS = 32


def stand_in_models(size: str):
    """(captioner, image size, llm) with random weights: ``tiny`` or ``cpu-max``."""
    import torch
    from transformers import BlipConfig, BlipForConditionalGeneration, LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    if size == "tiny":
        vision = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64,
                      image_size=32, patch_size=8)
        text = dict(vocab_size=512, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64)
        llm = LlamaConfig(vocab_size=512, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                          num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512)
    else:
        vision = dict(hidden_size=1024, num_hidden_layers=24, num_attention_heads=16, intermediate_size=4096,
                      image_size=384, patch_size=16)
        text = dict(vocab_size=30524, hidden_size=768, num_hidden_layers=12, num_attention_heads=12,
                    intermediate_size=3072)
        llm = LlamaConfig(vocab_size=128256, hidden_size=2048, intermediate_size=8192, num_hidden_layers=16,
                          num_attention_heads=32, num_key_value_heads=8, max_position_embeddings=8192,
                          rope_theta=500000.0, tie_word_embeddings=True)
    text.update(bos_token_id=text["vocab_size"] - 2, sep_token_id=102 % text["vocab_size"], pad_token_id=0)
    captioner = BlipForConditionalGeneration(BlipConfig(vision_config=vision, text_config=text)).eval()
    return captioner, vision["image_size"], LlamaForCausalLM(llm).eval()


def measure_text_pipeline(size: str, musicgen_preset: str, threads: int, repeats: int) -> dict:
    import torch

    from img2music.basics.models import load_models

    torch.set_num_threads(threads)
    captioner, image_size, llm = stand_in_models(size)
    t5 = load_models(preset=musicgen_preset).musicgen.text_encoder
    pixels = torch.randn(1, 3, image_size, image_size)
    prompt = torch.randint(0, llm.config.vocab_size, (1, PROMPT_TOKENS))
    t5_ids = torch.randint(0, t5.config.vocab_size, (1, T5_TOKENS))
    with torch.inference_mode():
        stages = {
            "captioner": summarize_ms(time_calls(lambda: captioner.generate(
                pixel_values=pixels, max_new_tokens=CAPTION_TOKENS, min_new_tokens=CAPTION_TOKENS,
                do_sample=False), 1, repeats)),
            "llm": summarize_ms(time_calls(lambda: llm.generate(
                input_ids=prompt, attention_mask=torch.ones_like(prompt), max_new_tokens=DIRECTIVE_TOKENS,
                min_new_tokens=DIRECTIVE_TOKENS, do_sample=False, pad_token_id=0), 1, repeats)),
            "t5": summarize_ms(time_calls(lambda: t5(input_ids=t5_ids), 1, repeats)),
        }
    params = {
        "captioner": sum(p.numel() for p in captioner.parameters()),
        "llm": sum(p.numel() for p in llm.parameters()),
    }
    return {"kind": "text-mediated stand-ins", "size": size, "stages": stages, "parameters": params,
            "tokens": {"caption": CAPTION_TOKENS, "prompt": PROMPT_TOKENS, "directive": DIRECTIVE_TOKENS,
                       "t5": T5_TOKENS},
            "peak_rss_mb": peak_rss_mb()}


def comparison(text: dict, eager: dict) -> dict:
    """Seconds to the first measured length of music (10 s by default), direct vs
    text-mediated, from measurements of one run.

    Both share MusicGen (decoder + EnCodec) as the eager reference measured it; the
    direct path adds preprocessing + CLIP + projector, the text path the captioner,
    LLM and T5 instead."""
    measured = [r for r in eager["rtf"].values() if r]
    if not measured:
        return {}
    rtf = measured[0]
    s = eager["stages"]
    front = (s["preprocess"]["median_ms"] + s["clip_vision"]["median_ms"] + s["projector"]["median_ms"]) / 1e3
    musicgen = rtf["wall_seconds"] - front
    text_front = sum(text["stages"][k]["median_ms"] for k in ("captioner", "llm", "t5")) / 1e3
    return {
        "audio_seconds": rtf["audio_seconds"],
        "direct_seconds": rtf["wall_seconds"],
        "direct_front_seconds": front,
        "text_mediated_seconds": text_front + musicgen,
        "text_front_seconds": text_front,
        "musicgen_seconds": musicgen,
        "text_overhead_ratio": (text_front + musicgen) / rtf["wall_seconds"],
    }
