"""The help formatter every CLI uses: each flag's default stated once, and only when it says something."""

from __future__ import annotations

import argparse


class DefaultsHelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """argparse's "(default: X)" suffix, left off where it would mislead or repeat: a flag
    whose help already names its default, an unset optional (None) and an on/off switch
    (False), where argparse would print "(default: None)" after "(default: the prompt bank)"."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if "default" in text or action.default is None or action.default is False:
            return text
        return super()._get_help_string(action)
