"""The torch modules of the streaming EnCodec decoder's two graphs (runtime/pipeline/encodec_stream.py).

``encodec_stream_front``: audio_codes (B, K, T) + lstm_h/lstm_c (layers, B, C) ->
lstm_frames (B, C, T - 6), lstm_h_out, lstm_c_out. The first convolution runs without
padding: the runtime's code window carries the 3 context frames on each side (reflected
at the sequence edges), so the same graph serves every chunk.
``encodec_stream_back``: lstm_frames (B, C, W) -> audio_values (B, 1, W * hop).
"""

from __future__ import annotations


def _module_base():
    from torch import nn

    return nn.Module


class EncodecStreamFront(_module_base()):
    """Quantizer decode -> first conv (valid) -> LSTM with explicit state (+ its skip)."""

    def __init__(self, codec) -> None:
        super().__init__()
        self.quantizer = codec.quantizer
        self.conv = codec.decoder.layers[0].conv  # the weight-normed Conv1d, no padding logic
        self.lstm = codec.decoder.layers[1].lstm

    def forward(self, audio_codes, lstm_h, lstm_c):
        embeddings = self.quantizer.decode(audio_codes.transpose(0, 1))  # (B, D, T)
        frames = self.conv(embeddings)  # (B, C, T - 6)
        seq = frames.permute(2, 0, 1)  # (T - 6, B, C)
        out, (h, c) = self.lstm(seq, (lstm_h, lstm_c))
        return (out + seq).permute(1, 2, 0), h, c


class EncodecStreamBack(_module_base()):
    """The upsampling stack after the LSTM."""

    def __init__(self, codec) -> None:
        super().__init__()
        import torch

        self.layers = torch.nn.ModuleList(codec.decoder.layers[2:])

    def forward(self, lstm_frames):
        hidden = lstm_frames
        for layer in self.layers:
            hidden = layer(hidden)
        return hidden


def lstm_shape(codec) -> tuple[int, int]:
    """(layers, channels) of EnCodec's decoder LSTM."""
    lstm = codec.decoder.layers[1].lstm
    return lstm.num_layers, lstm.hidden_size
