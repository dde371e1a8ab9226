#!/usr/bin/env python3
"""``python runtime/live.py``: live music from a camera, video, image folder or generated scenes.

The documented command of installation builders; the CLI itself is
``img2music.runtime.cli.live`` (``--help`` lists every flag and its default).
"""

if __name__ == "__main__":
    from img2music.runtime.cli.live import cli

    cli()
