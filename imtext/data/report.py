"""One way to tell the user about data that was skipped: a yellow line on stderr.

Loaders never drop input silently; every skip goes through `warn` with a count, so the message looks the
same whatever the source format, and tests can read it from stderr.
"""

from __future__ import annotations

from rich.console import Console

# stderr=True keeps stdout clean for tables and JSON; the console looks up sys.stderr at print time,
# so pytest's capture and redirections still see the messages.
_console = Console(stderr=True, highlight=False)


def warn(message: str) -> None:
    """Print `warning: message` to stderr (no markup parsing: paths and captions may contain brackets)."""
    _console.print(f"warning: {message}", style="yellow", markup=False, soft_wrap=True)


def examples(items: list[str], k: int = 3) -> str:
    """A short sample of `items` for a message: 'a, b, c (and 7 more)'."""
    head = ", ".join(items[:k])
    return head if len(items) <= k else f"{head} (and {len(items) - k} more)"
