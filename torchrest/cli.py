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
from torchrest.config import OptimizeConfig, ServerConfig, config_fields, env_name, flag_name
from torchrest.errors import StartupError


def parse_bool(text: str) -> bool:
    if text.lower() in {"1", "true", "yes", "on"}:
        return True
    if text.lower() in {"0", "false", "no", "off"}:
        return False
    raise ValueError(f"not a boolean: {text!r}")


CONVERTERS: dict[str, Any] = {
    "str": str,
    "int": int,
    "float": float,
    "Path": Path,
    "Path | None": Path,
    "str | None": str,
    "bool": parse_bool,
}
COMMANDS: dict[str, type] = {"serve": ServerConfig, "optimize": OptimizeConfig}


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
    add_config_flags(serve, ServerConfig)
    optimize = commands.add_parser(
        "optimize",
        help="find the fastest faithful backend for a model on this machine",
        description="Measure every candidate backend on this machine (speed, and agreement with fp32 on "
        "held-out inputs), reject the unfaithful, and write the fastest as <out>/<model>/ for "
        "`torchrest serve --model-repository <out>`.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    add_config_flags(optimize, OptimizeConfig)
    return parser


def add_config_flags(parser: argparse.ArgumentParser, kind: type) -> None:
    """One flag per field of `kind`; the default comes from TORCHREST_<FIELD> when it is set."""
    for spec in config_fields(kind):
        convert = CONVERTERS[str(spec.type)]
        env = env_name(spec.name)
        default = convert(os.environ[env]) if env in os.environ else spec.default
        # a boolean field becomes a --flag / --no-flag pair; every other field takes a value
        style: dict[str, Any] = (
            {"action": argparse.BooleanOptionalAction} if convert is parse_bool else {"type": convert}
        )
        parser.add_argument(
            f"--{flag_name(spec.name)}",
            dest=spec.name,
            default=default,
            help=f"{spec.metadata['help']} [env {env}]",
            **style,
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
    kind = COMMANDS[args.command]
    config = kind(**{spec.name: getattr(args, spec.name) for spec in config_fields(kind)})
    logging.basicConfig(level=config.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        if isinstance(config, OptimizeConfig):
            return run_optimize(config)
        from torchrest.server import serve

        return serve(config)
    except StartupError as exc:
        print(f"torchrest: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


def run_optimize(config: OptimizeConfig) -> int:
    from torchrest.optimize import optimize

    outcome = optimize(config)
    report = outcome.report
    chosen = next(c for c in report.candidates if c.chosen)
    print(
        f"chose {chosen.name}: {chosen.best_throughput:.1f} img/s at batch {chosen.best_batch_size} "
        f"({chosen.speedup:.2f}x torch eager), top-1 agreement {chosen.top1_agreement:.1%}\n"
        f"wrote {outcome.folder} (report.md, report.png); serve it with: "
        f"torchrest serve --model-repository {outcome.folder.parent}"
    )
    for note in report.notes:
        print(f"note: {note}")
    return 0
