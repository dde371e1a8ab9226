"""Exact streaming EnCodec decode vs the full decode (SNR overall and near every seam)."""

import copy

import numpy as np
import pytest
import torch

from img2music.basics.errors import Img2MusicError
from img2music.export.encodec_stream import EncodecStreamBack, EncodecStreamFront, lstm_shape
from img2music.runtime.pipeline.encodec_stream import LOOKAHEAD_FRAMES, EncodecStreamDecoder, snr_db

HOP = 640
SEAM = 640  # +-20 ms around every seam


def full_decode(codec, codes):
    with torch.no_grad():
        return codec.decode(torch.from_numpy(codes)[None], [None]).audio_values[:, 0].numpy()


def stream(decoder, codes, chunk):
    pieces, seams = [], []
    for i in range(0, codes.shape[2], chunk):
        pieces.append(decoder.push(codes[:, :, i : i + chunk]))
        seams.append(sum(p.shape[1] for p in pieces))
    pieces.append(decoder.flush())
    return np.concatenate(pieces, axis=1), sorted(set(seams))


def assert_exact(reference, audio, seams):
    assert audio.shape == reference.shape
    assert snr_db(reference, audio) >= 90.0
    inner = [s for s in seams if 0 < s < reference.shape[1]]
    assert inner, "the stream emitted audio before the end"
    for s in inner:
        lo, hi = max(0, s - SEAM), min(reference.shape[1], s + SEAM)
        assert snr_db(reference[:, lo:hi], audio[:, lo:hi]) >= 90.0, f"seam at sample {s}"


def torch_functions(codec):
    front, back = EncodecStreamFront(codec).eval(), EncodecStreamBack(codec).eval()

    def f(codes, h, c):
        with torch.no_grad():
            out = front(torch.from_numpy(codes), torch.from_numpy(h), torch.from_numpy(c))
        return tuple(t.numpy() for t in out)

    def b(frames):
        with torch.no_grad():
            return back(torch.from_numpy(frames))[:, 0].numpy()

    return f, b


@pytest.mark.parametrize("chunk", [7, 25, 50])
def test_onnx_stream_equals_full_decode(tiny_onnx, tiny_models, chunk):
    codes = np.random.default_rng(chunk).integers(0, 2048, (2, 4, 163))
    decoder = tiny_onnx.stream_decoder(batch=2)
    audio, seams = stream(decoder, codes, chunk)
    assert_exact(full_decode(tiny_models.musicgen.audio_encoder, codes), audio, seams)


def test_audio_lags_by_the_lookahead_only(tiny_onnx):
    decoder = tiny_onnx.stream_decoder(batch=1)
    codes = np.random.default_rng(0).integers(0, 2048, (1, 4, 30))
    out = decoder.push(codes[:, :, :20])
    assert out.shape[1] == (20 - LOOKAHEAD_FRAMES) * HOP  # 80 ms held back
    assert decoder.push(codes[:, :, 20:21]).shape[1] == HOP
    assert decoder.push(codes[:, :, 21:]).shape[1] == 9 * HOP
    assert decoder.flush().shape[1] == LOOKAHEAD_FRAMES * HOP
    # bounded memory: only the context frames are kept
    assert decoder.codes.shape[2] <= 2 * LOOKAHEAD_FRAMES and decoder.lstm.shape[2] <= 4


def test_long_memory_lstm_stays_exact(tiny_models):
    """An LSTM pushed to remember long (recurrent weights x4): the carried state keeps it exact."""
    codec = copy.deepcopy(tiny_models.musicgen.audio_encoder)
    with torch.no_grad():
        for name, param in codec.decoder.layers[1].lstm.named_parameters():
            if name.startswith("weight_hh"):
                param.mul_(4.0)
    layers, channels = lstm_shape(codec)
    codes = np.random.default_rng(5).integers(0, 2048, (1, 4, 300))
    decoder = EncodecStreamDecoder(*torch_functions(codec), (layers, 1, channels), HOP)
    audio, seams = stream(decoder, codes, 25)
    assert_exact(full_decode(codec, codes), audio, seams)


def test_misuse_is_refused(tiny_onnx):
    decoder = tiny_onnx.stream_decoder(batch=1)
    with pytest.raises(Img2MusicError):
        decoder.push(np.zeros((2, 4, 5), dtype=np.int64))
    decoder.push(np.zeros((1, 4, 2), dtype=np.int64))
    with pytest.raises(Img2MusicError, match="at least"):
        decoder.flush()


@pytest.fixture(scope="module")
def small_random_codec():
    from img2music.basics.models import build_preset

    return build_preset("small-random").musicgen.audio_encoder


@pytest.mark.slow
@pytest.mark.parametrize("chunk", [7, 25, 50])
def test_small_random_codec_stream(small_random_codec, chunk):
    codec = small_random_codec
    layers, channels = lstm_shape(codec)
    codes = np.random.default_rng(chunk).integers(0, 2048, (1, 4, 153))
    decoder = EncodecStreamDecoder(*torch_functions(codec), (layers, 1, channels), HOP)
    audio, seams = stream(decoder, codes, chunk)
    assert_exact(full_decode(codec, codes), audio, seams)
