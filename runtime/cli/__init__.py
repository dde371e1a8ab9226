"""The command-line front ends: argument parsing and printing, nothing else.

- ``generate``: ``runtime/generate.py`` (img2music-generate): images and/or a prompt to WAVs.
- ``live``: ``runtime/live.py`` (img2music-live): a :class:`LiveSession` from flags.
- ``arguments``: argparse value types and the flags several CLIs share.

May import: img2music.basics, img2music.runtime (all of it).
"""
