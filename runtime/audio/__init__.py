"""Audio after the model: frames, files, the resampler, the playout and the sound card.

- ``frames``: mono ``(S,)`` and stereo ``(S, C)`` helpers every live stage uses.
- ``files``: :class:`WavRecorder` (a header valid after every flush) and output names.
- ``resampler``: the model rate to the device's (soxr), also used by training and evaluation.
- ``sinks``: the ring buffer, the sound card (sounddevice) and the clock sink (``--no-audio``).
- ``playout``: keeps the ring fed and degrades (cheaper, repeat, silence) when it cannot.
- ``recording``: ``live.py --record``, segments that never overwrite and outlive a full disk.
- ``native_stderr``: PortAudio/ALSA's raw stderr lines turned into log records.

May import: img2music.basics.
"""
