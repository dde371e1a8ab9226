"""A live session: one typed config (:class:`LiveSessionConfig`) and the one place that
assembles a run from it (:class:`LiveSession`): bundle, source, engine, playout, sink,
status and servers, with nothing attached afterwards.

- ``config``: :class:`LiveSessionConfig` and its parts (backend, output, servers; the
  source and engine configs come from ``runtime.loop.config``).
- ``session``: :class:`LiveSession`, built from a config and run until ``duration``,
  Ctrl-C or SIGTERM.

May import: img2music.basics, img2music.runtime.bundle, img2music.runtime.generation,
img2music.runtime.backends, img2music.runtime.pipeline, img2music.runtime.audio,
img2music.runtime.loop, img2music.runtime.control.
"""
