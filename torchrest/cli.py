"""Command line: argument parsing only. Flags and TORCHREST_* environment fallbacks are derived from
`ServerConfig`'s fields; a `StartupError` becomes one line on stderr and exit status 2."""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from torchrest import __version__
from torchrest.config import ServerConfig, config_fields, env_name, flag_name
from torchrest.errors import StartupError


def parse_bool(text: str) -> bool:
    if text.lower() in {"1", "true", "yes", "on"}:
        return True
    if text.lower() in {"0", "false", "no", "off"}:
        return False
    raise ValueError(f"not a boolean: {text!r}")


CONVERTERS: dict[str, Any] = {"str": str, "int": int, "float": float, "Path | None": Path, "bool": parse_bool}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="torchrest", description=__doc__)
    parser.add_argument("--version", action="version", version=f"torchrest {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    serve = commands.add_parser(
        "serve",
        help="serve a model over HTTP",
        description="Serve an image classifier: POST /classify, GET /health, GET /metrics.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    add_config_flags(serve)
    return parser


def add_config_flags(parser: argparse.ArgumentParser) -> None:
    """One flag per ServerConfig field; the default comes from TORCHREST_<FIELD> when it is set."""
    for spec in config_fields():
        convert = CONVERTERS[str(spec.type)]
        env = env_name(spec.name)
        default = convert(os.environ[env]) if env in os.environ else spec.default
        # a boolean field becomes a --flag / --no-flag pair; every other field takes a value
        kind: dict[str, Any] = (
            {"action": argparse.BooleanOptionalAction} if convert is parse_bool else {"type": convert}
        )
        parser.add_argument(
            f"--{flag_name(spec.name)}",
            dest=spec.name,
            default=default,
            help=f"{spec.metadata['help']} [env {env}]",
            **kind,
        )


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except ValueError as exc:  # a TORCHREST_* variable that does not parse
        print(f"torchrest: error: bad environment value: {exc}", file=sys.stderr)
        return 2
    if args.command is None:
        parser.print_help()
        return 2
    options = {spec.name: getattr(args, spec.name) for spec in config_fields()}
    config = ServerConfig(**options)
    logging.basicConfig(level=config.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        from torchrest.server import serve

        return serve(config)
    except StartupError as exc:
        print(f"torchrest: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
