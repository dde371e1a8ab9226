"""Phase I's text models: the captioner (BLIP-2) and the instruction LLM (Llama).

Users pass hub ids or local directories (defaults: ``Salesforce/blip2-opt-2.7b`` and
``meta-llama/Llama-3.1-8B-Instruct``). ``tiny`` builds the same architectures
(Blip2ForConditionalGeneration with an OPT language model; LlamaForCausalLM with a chat
template) at toy sizes with random weights and locally trained tokenizers, so every
path of the dataset builder runs in tests without a hub. Their text is gibberish.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from img2music.basics.models import from_pretrained
from img2music.basics.prompt_bank import load_directives

DEFAULT_CAPTIONER = "Salesforce/blip2-opt-2.7b"
DEFAULT_LLM = "meta-llama/Llama-3.1-8B-Instruct"
TINY = "tiny"

SYSTEM_PROMPT = ("You are an enhanced description generator. You will be given an image description and you "
                 "have to enhance it in musical terms.")
PROMPTS = {
    "thesis": 'Generate a musical theme description for the following image description: "{caption}" '
              "Include details like mood, genre, tempo, and melody in two lines.",
    "compose": 'Compose a piece of music that reflects the following scene: "{caption}". '
               "Include mood, tempo, and instrumentation.",
}
"""User prompts: the thesis' and the alternate one for the ablation (``--prompt``)."""

# Llama 3's chat layout, small enough to read; real checkpoints bring their own template.
TINY_CHAT_TEMPLATE = (
    "{% for m in messages %}<|start_header_id|>{{ m['role'] }}<|end_header_id|>\n\n{{ m['content'] }}<|eot_id|>"
    "{% endfor %}{% if add_generation_prompt %}<|start_header_id|>assistant<|end_header_id|>\n\n{% endif %}"
)


@dataclass
class Captioner:
    model: Any
    processor: Any
    image_size: int
    max_new_tokens: int = 30
    min_new_tokens: int = 0

    def __call__(self, images) -> list[str]:
        import torch

        inputs = self.processor(images=images, return_tensors="pt")
        with torch.inference_mode():
            out = self.model.generate(pixel_values=inputs["pixel_values"].to(self.model.dtype),
                                      max_new_tokens=self.max_new_tokens, min_new_tokens=self.min_new_tokens,
                                      do_sample=False)
        texts = self.processor.tokenizer.batch_decode(out, skip_special_tokens=True)
        return [t.strip() for t in texts]


@dataclass
class DirectiveWriter:
    model: Any
    tokenizer: Any
    prompt: str = "thesis"
    max_new_tokens: int = 80

    def __call__(self, captions: list[str]) -> list[str]:
        import torch

        chats = [[{"role": "system", "content": SYSTEM_PROMPT},
                  {"role": "user", "content": PROMPTS[self.prompt].format(caption=c)}] for c in captions]
        texts = [self.tokenizer.apply_chat_template(c, tokenize=False, add_generation_prompt=True) for c in chats]
        self.tokenizer.padding_side = "left"  # decoder-only batches pad on the left
        enc = self.tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=False)
        with torch.inference_mode():
            out = self.model.generate(**enc, max_new_tokens=self.max_new_tokens, do_sample=False,
                                      pad_token_id=self.tokenizer.pad_token_id)
        new = out[:, enc["input_ids"].shape[1]:]
        return [t.strip() for t in self.tokenizer.batch_decode(new, skip_special_tokens=True)]


def _tiny_tokenizer(extra_specials: list[str]):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    specials = ["<pad>", "<s>", "</s>", "<unk>"] + extra_specials
    trainer = trainers.BpeTrainer(vocab_size=500, special_tokens=specials, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    corpus = load_directives() + [SYSTEM_PROMPT] + list(PROMPTS.values())
    tok.train_from_iterator(corpus, trainer=trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", bos_token="<s>", eos_token="</s>",
                                   unk_token="<unk>", additional_special_tokens=extra_specials)


def tiny_captioner(seed: int = 0) -> Captioner:
    """BLIP-2 (ViT + Q-Former + OPT) at toy size, random weights."""
    import torch
    from transformers import Blip2Config, Blip2ForConditionalGeneration, Blip2Processor, BlipImageProcessor, OPTConfig

    tokenizer = _tiny_tokenizer(["<image>"])
    image_token = tokenizer.convert_tokens_to_ids("<image>")
    text = OPTConfig(vocab_size=len(tokenizer), hidden_size=32, ffn_dim=64, num_hidden_layers=2,
                     num_attention_heads=4, word_embed_proj_dim=32, max_position_embeddings=128,
                     bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                     pad_token_id=tokenizer.pad_token_id)
    config = Blip2Config(
        vision_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                           image_size=32, patch_size=8),
        qformer_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                            encoder_hidden_size=32, vocab_size=len(tokenizer)),
        text_config=text.to_dict(), num_query_tokens=4, image_token_index=image_token)
    torch.manual_seed(seed)
    model = Blip2ForConditionalGeneration(config).eval()
    image_processor = BlipImageProcessor(size={"height": 32, "width": 32})
    processor = Blip2Processor(image_processor=image_processor, tokenizer=tokenizer, num_query_tokens=4)
    return Captioner(model, processor, 32, max_new_tokens=12, min_new_tokens=6)  # random weights stop at once


def tiny_llm(seed: int = 0, prompt: str = "thesis") -> DirectiveWriter:
    """Llama at toy size with a Llama-3-style chat template, random weights."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    tokenizer = _tiny_tokenizer(["<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"])
    tokenizer.chat_template = TINY_CHAT_TEMPLATE
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
                         bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                         pad_token_id=tokenizer.pad_token_id)
    torch.manual_seed(seed)
    return DirectiveWriter(LlamaForCausalLM(config).eval(), tokenizer, prompt, max_new_tokens=16)


def load_captioner(name: str, device: str = "cpu") -> Captioner:
    if name == TINY:
        return tiny_captioner()
    from transformers import Blip2ForConditionalGeneration, Blip2Processor

    dtype = _dtype(device)
    model = from_pretrained("captioner", name, lambda n, **kw: Blip2ForConditionalGeneration.from_pretrained(
        n, dtype=dtype, **kw)).to(device).eval()
    processor = from_pretrained("captioner processor", name, Blip2Processor.from_pretrained)
    return Captioner(model, processor, int(model.config.vision_config.image_size))


def load_llm(name: str, prompt: str = "thesis", device: str = "cpu") -> DirectiveWriter:
    if name == TINY:
        return tiny_llm(prompt=prompt)
    from transformers import AutoModelForCausalLM, AutoTokenizer

    dtype = _dtype(device)
    model = from_pretrained("LLM", name, lambda n, **kw: AutoModelForCausalLM.from_pretrained(
        n, dtype=dtype, **kw)).to(device).eval()
    tokenizer = from_pretrained("LLM tokenizer", name, AutoTokenizer.from_pretrained)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return DirectiveWriter(model, tokenizer, prompt)


def _dtype(device: str):
    import torch

    return torch.float16 if device.startswith("cuda") else torch.float32
