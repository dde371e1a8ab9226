"""Text prompt -> T5 conditioning tokens, from the bundle alone (tokenizers + onnxruntime).

The bundle's ``tokenizer.json`` (MusicGen's own T5 tokenizer, appending ``</s>``) and
``t5_encoder.onnx`` replace transformers' tokenizer and ``T5EncoderModel``; export-time
validation checked both against them. A prompt is encoded once per change (and the last
few are kept: a live performer toggling between prompts costs nothing twice). Thread-safe: a
live run encodes a new prompt in the thread that asked for it, while the compute thread reads
the kept encodings (``runtime.control.dispatcher``).
"""

from __future__ import annotations

import logging
import threading
from collections import OrderedDict
from functools import cached_property
from pathlib import Path

import numpy as np

from img2music.basics.errors import Img2MusicError
from img2music.basics.model_config import TextConfig

log = logging.getLogger(__name__)

TOKENIZER_FILE = "tokenizer.json"
"""The tokenizer's name in a bundle."""
KEEP_ENCODINGS = 8
"""Encoded prompts kept (a T5 run costs a decoder step or more: see the per-stage benchmark)."""


def load_tokenizer(path: str | Path):
    """The ``tokenizers`` Tokenizer of a bundle, with padding and truncation off."""
    try:
        from tokenizers import Tokenizer
    except ImportError as exc:
        raise Img2MusicError("text prompts need the 'tokenizers' package: pip install tokenizers") from exc
    try:
        tokenizer = Tokenizer.from_file(str(path))
    except Exception as exc:  # tokenizers raises its own Exception type for a bad file
        raise Img2MusicError(f"cannot read the tokenizer {path}: {exc}") from exc
    tokenizer.no_padding()
    tokenizer.no_truncation()
    return tokenizer


def check_prompt(prompt) -> str:
    """A usable prompt (surrounding white space dropped), or one clear error."""
    if not isinstance(prompt, str):
        raise Img2MusicError(f"a prompt is text, got {type(prompt).__name__}")
    text = prompt.strip()
    if not text:
        raise Img2MusicError("the prompt is empty: give some words (e.g. --prompt \"slow warm piano, no drums\")")
    return text


class TextEncoder:
    """A bundle's T5 encoder session and tokenizer. ``session`` may be a function that opens it:
    then it is opened on the first encoding (a live run without a prompt never pays for T5)."""

    def __init__(self, session, tokenizer_path: str | Path, config: TextConfig) -> None:
        self._session, self.config = session, config
        self._tokenizer_path = tokenizer_path
        self._kept: OrderedDict[str, tuple[np.ndarray, np.ndarray]] = OrderedDict()
        self._lock = threading.Lock()
        """Guards the kept encodings and the session's opening (never held while T5 runs)."""

    def token_ids(self, prompt: str) -> np.ndarray:
        """(T,) int64 ids, ``</s>`` included; a prompt over the limit is refused, not cut."""
        ids = self.tokenizer.encode(check_prompt(prompt)).ids
        if len(ids) > self.config.max_tokens:
            raise Img2MusicError(f"the prompt is {len(ids)} tokens long; this bundle's text encoder takes at most "
                                 f"{self.config.max_tokens}: shorten it (it is refused rather than cut, so the music "
                                 "never follows half a sentence)")
        return np.asarray(ids, dtype=np.int64)

    @cached_property
    def tokenizer(self):
        """The bundle's T5 tokenizer, loaded on first use (not every live run has a prompt)."""
        return load_tokenizer(self._tokenizer_path)

    @property
    def session(self):
        """The T5 encoder's onnxruntime session (opened now if it was not yet)."""
        with self._lock:
            if callable(self._session) and not hasattr(self._session, "run"):
                self._session = self._session()
            return self._session

    @session.setter
    def session(self, value) -> None:
        self._session = value

    def encode(self, prompt: str) -> tuple[np.ndarray, np.ndarray]:
        """Prompt -> T5 hidden states (1, T, D_t5) float32 and mask (1, T) int64."""
        text = check_prompt(prompt)
        with self._lock:
            if text in self._kept:
                self._kept.move_to_end(text)
                return self._kept[text]
        ids = self.token_ids(text)[None]  # (1, T)
        mask = np.ones_like(ids)
        hidden = self.session.run(None, {"input_ids": ids, "attention_mask": mask})[0]  # (1, T, D_t5)
        with self._lock:
            self._kept[text] = (hidden, mask)
            if len(self._kept) > KEEP_ENCODINGS:
                self._kept.popitem(last=False)
        log.debug("prompt %r: %d tokens", text, ids.shape[1])
        return hidden, mask
