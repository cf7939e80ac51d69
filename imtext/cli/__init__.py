"""imtext's command-line face: argument parsing (`parser`), the shared config flags (`config_flags`), the
handlers of the library's commands (`commands`), of the apps' commands (`apps`: serve, ui, tune) and the
demo (`demo`). Only this package reaches `serve/`, `tune/` and `ui/`, and only inside handlers."""

from __future__ import annotations

import sys

from imtext.cli.parser import build_parser
from imtext.errors import ImtextError

__all__ = ["build_parser", "main"]


def main(argv: list[str] | None = None) -> int:
    """The `imtext` console script: a user's mistake is one line on stderr and exit 2, never a traceback."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command == "submit" and args.entrypoint and args.entrypoint[0] == "--":
        args.entrypoint = args.entrypoint[1:]
    try:
        return int(args.func(args) or 0)
    except ImtextError as e:
        print(f"imtext: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("imtext: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
