"""Tokenizers built locally (no hub): trained on the prompt bank's text.

Real checkpoints ship their tokenizers; the presets cannot download t5's or CLIP's,
so they get small real tokenizers trained here with the ``tokenizers`` library. Every
text path (CLIP text tower, T5 encoder) then runs for real in tests. Saved with the
model, they load back through ``AutoTokenizer.from_pretrained`` like any checkpoint's.
"""

from __future__ import annotations

import json
from typing import Iterable

T5_SPECIALS = ("<pad>", "</s>", "<unk>")
CLIP_BOS, CLIP_EOS = "<|startoftext|>", "<|endoftext|>"


def build_t5_tokenizer(corpus: Iterable[str], vocab_size: int = 400):
    """A T5-style tokenizer: unigram, metaspace, ``</s>`` appended, pad id 0."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.Unigram())
    tok.pre_tokenizer = pre_tokenizers.Metaspace()
    tok.decoder = decoders.Metaspace()
    trainer = trainers.UnigramTrainer(
        vocab_size=vocab_size, special_tokens=list(T5_SPECIALS), unk_token="<unk>", shrinking_factor=0.75,
        show_progress=False,
    )
    tok.train_from_iterator(list(corpus), trainer=trainer)
    # The trainer's scores differ in their last bits and tied pieces come in hash order, both
    # from process to process: round the scores and fix the order (specials, score, text), so
    # that a preset's token ids, and with them its prompt bank and bundle, repeat exactly.
    vocab = json.loads(tok.to_str())["model"]["vocab"]  # [[piece, score], ...], specials first
    specials = [(piece, score) for piece, score in vocab[: len(T5_SPECIALS)]]
    pieces = sorted(((piece, round(score, 3)) for piece, score in vocab[len(T5_SPECIALS):]),
                    key=lambda item: (-item[1], item[0]))
    tok.model = models.Unigram(specials + pieces, unk_id=T5_SPECIALS.index("<unk>"), byte_fallback=False)
    eos = tok.token_to_id("</s>")
    tok.post_processor = processors.TemplateProcessing(single="$A </s>", special_tokens=[("</s>", eos)])
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, pad_token="<pad>", eos_token="</s>", unk_token="<unk>", model_max_length=512
    )


def build_clip_tokenizer(corpus: Iterable[str], vocab_size: int = 400):
    """A CLIP-style tokenizer: lowercase BPE, start/end tokens, padded with the end token."""
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE(unk_token=CLIP_EOS))
    tok.normalizer = normalizers.Lowercase()
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=[CLIP_BOS, CLIP_EOS], show_progress=False)
    tok.train_from_iterator(list(corpus), trainer=trainer)
    bos, eos = tok.token_to_id(CLIP_BOS), tok.token_to_id(CLIP_EOS)
    tok.post_processor = processors.TemplateProcessing(
        single=f"{CLIP_BOS} $A {CLIP_EOS}", special_tokens=[(CLIP_BOS, bos), (CLIP_EOS, eos)]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token=CLIP_BOS, eos_token=CLIP_EOS, pad_token=CLIP_EOS,
        unk_token=CLIP_EOS, model_max_length=77,
    )
