"""The live loop: frames -> scenes -> endless music, one compute thread, threads at the edges.

- ``engine``: :class:`LiveEngine`, what the compute thread does next and when.
- ``config``: :class:`EngineConfig` and :class:`SourceConfig`, the live loop's settings.
- ``budget``: the window this machine can generate in real time, measured and re-chosen.
- ``scene``: scene detection on CLIP embeddings (hysteresis) and conditioning blends.
- ``sources``, ``source_thread``: cameras, videos, image folders, synthetic scenes; kept alive.
- ``prompt``: the live text prompt joined to every scene.
- ``transport``: pause, resume, fade out.
- ``thread_watch``: the supervisor of the threads the music depends on.

May import: img2music.basics, img2music.runtime.generation, img2music.runtime.pipeline,
img2music.runtime.audio.
"""
