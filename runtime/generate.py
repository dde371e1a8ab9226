#!/usr/bin/env python3
"""``python runtime/generate.py``: images and/or a text prompt to WAV files.

The documented command; the CLI itself is ``img2music.runtime.cli.generate`` (``--help``
lists every flag and its default).
"""

if __name__ == "__main__":
    from img2music.runtime.cli.generate import cli

    cli()
