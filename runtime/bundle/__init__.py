"""The engine bundle: ``manifest.json`` parsed into typed objects, every file verified at load.

- ``manifest``: the manifest as frozen dataclasses (model facts, files, provenance); the
  exporter writes it through the same classes.
- ``loading``: :func:`load_bundle` (schema version, sizes, sha256) and the checks of a
  session against the I/O its manifest records.

May import: img2music.basics.
"""
