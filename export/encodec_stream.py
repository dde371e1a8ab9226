"""The torch modules of the streaming EnCodec decoder's two graphs (runtime/pipeline/encodec_stream.py).

``encodec_stream_front``: audio_codes (B, K, T) + lstm_h/lstm_c (layers, B, C) ->
lstm_frames (B, C, T - 6), lstm_h_out, lstm_c_out. The first convolution runs without
padding: the runtime's code window carries the 3 context frames on each side (reflected
at the sequence edges), so the same graph serves every chunk.
``encodec_stream_back``: lstm_frames (B, C, W) -> audio_values (B, 1, W * hop).
``encodec_stream_front_int8`` (CPU bundles): the front with its LSTM's weights in 8 bits
(ONNX Runtime's DynamicQuantizeLSTM, ``calibration.quantize.quantize_lstm``), kept beside the float32 one:
the runtime measures both on the host and runs the faster (``runtime.pipeline.encodec_choice``).
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
    """The upsampling stack after the LSTM, written for the CPU (same numbers as transformers'
    layers to float rounding, ~1e-7): static padding instead of the length-dependent padding
    arithmetic each EnCodec conv computes (31 Shape/Gather/Ceil chains in the graph), every
    conv as a Conv2d over (B, C, 1, T) so that ONNX Runtime's CPU provider takes its blocked
    (NCHWc) kernels, and each ConvTranspose1d (kernel 2s, stride s) as a kernel-2 conv to
    s * C_out channels whose phases are interleaved, instead of ONNX Runtime's col2im."""

    def __init__(self, codec) -> None:
        super().__init__()
        from torch import nn
        from transformers.models.encodec.modeling_encodec import (
            EncodecConv1d,
            EncodecConvTranspose1d,
            EncodecResnetBlock,
        )

        layers = []
        for layer in codec.decoder.layers[2:]:
            if isinstance(layer, nn.ELU):
                layers.append(nn.ELU())
            elif isinstance(layer, EncodecConvTranspose1d):
                layers.append(_PolyphaseConvTranspose(layer))
            elif isinstance(layer, EncodecResnetBlock):
                layers.append(_Residual(layer))
            elif isinstance(layer, EncodecConv1d):
                layers.append(_StaticConv(layer))
            else:
                raise TypeError(f"EnCodec decoder layer {type(layer).__name__} has no streaming export")
        self.layers = nn.Sequential(*layers)

    def forward(self, lstm_frames):  # (B, C, W)
        return self.layers(lstm_frames[:, :, None, :])[:, :, 0, :]  # (B, 1, W * hop)


def _weights(conv):
    """A (possibly weight-normed) conv's effective weight and bias, detached."""
    return conv.weight.detach().clone(), None if conv.bias is None else conv.bias.detach().clone()


class _StaticConv(_module_base()):
    """EncodecConv1d (stride 1, not causal): its padding is the same for every length."""

    def __init__(self, layer) -> None:
        super().__init__()
        from torch import nn

        conv = layer.conv
        if conv.stride[0] != 1 or layer.causal or layer.norm_type != "weight_norm":
            raise TypeError("the streaming export takes non-causal, stride-1, weight-normed EnCodec convs")
        weight, bias = _weights(conv)  # (C_out, C_in, k)
        kernel, dilation = conv.kernel_size[0], conv.dilation[0]
        total = (kernel - 1) * dilation
        self.right = total // 2
        self.left = total - self.right
        self.mode = layer.pad_mode
        self.conv = nn.Conv2d(weight.shape[1], weight.shape[0], (1, kernel), dilation=(1, dilation))
        self.conv.weight.data, self.conv.bias.data = weight[:, :, None, :], bias

    def forward(self, x):  # (B, C, 1, T)
        import torch.nn.functional as F

        if self.left or self.right:
            x = F.pad(x, (self.left, self.right, 0, 0), mode=self.mode)
        return self.conv(x)


class _PolyphaseConvTranspose(_module_base()):
    """EncodecConvTranspose1d with kernel 2s and stride s, trimmed: output phase r at frame t is
    W[:, :, r] . x[t] + W[:, :, r + s] . x[t - 1], i.e. a kernel-2 conv on the input padded with
    one zero each side, to (r, C_out) channels, then the phases interleaved."""

    def __init__(self, layer) -> None:
        super().__init__()
        import torch
        from torch import nn

        conv = layer.conv
        weight, bias = _weights(conv)  # (C_in, C_out, k)
        kernel, stride = conv.kernel_size[0], conv.stride[0]
        if kernel != 2 * stride or layer.causal:
            raise TypeError("the streaming export takes non-causal transposed convs with kernel = 2 * stride")
        c_in, c_out = weight.shape[0], weight.shape[1]
        taps = torch.stack([weight[:, :, stride:], weight[:, :, :stride]], dim=-1)  # (C_in, C_out, s, 2)
        self.conv = nn.Conv2d(c_in, stride * c_out, (1, 2), bias=False)
        self.conv.weight.data = taps.permute(2, 1, 0, 3).reshape(stride * c_out, c_in, 1, 2)
        self.bias = nn.Parameter(bias.view(1, c_out, 1, 1))
        self.stride, self.c_out = stride, c_out
        total = kernel - stride
        self.trim_right = total // 2
        self.trim_left = total - self.trim_right

    def forward(self, x):  # (B, C_in, 1, L)
        import torch.nn.functional as F

        y = self.conv(F.pad(x, (1, 1, 0, 0)))  # (B, s * C_out, 1, L + 1)
        b, _, _, n = y.shape
        y = y.reshape(b, self.stride, self.c_out, n).permute(0, 2, 3, 1).reshape(b, self.c_out, 1, n * self.stride)
        return y[..., self.trim_left : n * self.stride - self.trim_right] + self.bias  # (B, C_out, 1, L * s)


class _Residual(_module_base()):
    """EncodecResnetBlock without a conv shortcut (the 32 kHz config): x + block(x)."""

    def __init__(self, block) -> None:
        super().__init__()
        from torch import nn

        if not isinstance(block.shortcut, nn.Identity):
            raise TypeError("the streaming export takes EnCodec residual blocks without a conv shortcut")
        self.block = nn.Sequential(*[nn.ELU() if isinstance(layer, nn.ELU) else _StaticConv(layer)
                                     for layer in block.block])

    def forward(self, x):
        return x + self.block(x)


def lstm_shape(codec) -> tuple[int, int]:
    """(layers, channels) of EnCodec's decoder LSTM."""
    lstm = codec.decoder.layers[1].lstm
    return lstm.num_layers, lstm.hidden_size

