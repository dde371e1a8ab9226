"""User-facing errors and the CLI wrapper that turns them into one clear line.

Every CLI entry point runs through :func:`run_cli`: an :class:`Img2MusicError`
becomes ``error: <message>`` on stderr and exit code 2 (a :class:`RuntimeFault`: 1),
Ctrl-C exits 130. Anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import logging
import sys
from typing import Callable, Sequence


class Img2MusicError(Exception):
    """A problem the user can fix (bad input, missing model, corrupt bundle)."""

    exit_code = 2


def require(ok: bool, message: str) -> None:
    """One clear error (``message``) unless ``ok``: how configs check their fields."""
    if not ok:
        raise Img2MusicError(message)


class RuntimeFault(Img2MusicError):
    """A fault while running that input did not cause (a thread of the live runtime died or
    hung): exit 1, which a service manager's Restart=on-failure answers with a restart."""

    exit_code = 1


EXIT_USER_ERROR = Img2MusicError.exit_code
EXIT_FAULT = RuntimeFault.exit_code
EXIT_INTERRUPTED = 130


def run_cli(main: Callable[[Sequence[str] | None], int | None], argv: Sequence[str] | None = None) -> int:
    """Run ``main(argv)`` and map user errors and Ctrl-C to exit codes."""
    try:
        code = main(argv)
    except Img2MusicError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    return 0 if code is None else int(code)


def setup_logging(verbose: bool) -> None:
    """Configure logging for a CLI: INFO with ``-v``, WARNING otherwise.

    Without ``-v`` transformers is kept quiet (its config warnings and weight-loading
    bars mean nothing to a user of the CLI); set before transformers is imported.
    """
    import os

    if not verbose:
        os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
        os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
        os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")
    logging.basicConfig(
        level=logging.INFO if verbose else logging.WARNING,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
