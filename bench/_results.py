"""Writes a benchmark's figures: `<stem>.json` and `<stem>.md`, with the command."""

import json
import os
import sys


def command_line():
    """The command that is running, as a user would type it."""
    return "python " + " ".join(sys.argv)


def write(stem, payload, markdown):
    """Writes `payload` (a dict, given the command) as JSON and `markdown` as text."""
    os.makedirs(os.path.dirname(stem) or ".", exist_ok=True)
    with open(stem + ".json", "w") as f:
        json.dump(dict(payload, command=command_line()), f, indent=2)
    with open(stem + ".md", "w") as f:
        f.write(markdown)
    print(markdown)
