"""Command line: argument parsing only. Flags, their --help sections and TORCHREST_* environment fallbacks
are derived from the fields of `ServerConfig` and `OptimizeConfig` (torchrest.config); a `StartupError` or
`ModelLoadError` becomes one line on stderr and exit status 2."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from torchrest import __version__
from torchrest.config import FIDELITY, GROUPS, OptimizeConfig, ServerConfig, config_fields, env_name, flag_name
from torchrest.errors import ModelLoadError, StartupError
from torchrest.logs import TEXT, configure_logging


def parse_bool(text: str) -> bool:
    if text.lower() in {"1", "true", "yes", "on"}:
        return True
    if text.lower() in {"0", "false", "no", "off"}:
        return False
    raise ValueError(f"not a boolean: {text!r}")


CONVERTERS: dict[str, Any] = {
    "str": str,
    "int": int,
    "int | None": int,
    "float": float,
    "Path": Path,
    "Path | None": Path,
    "str | None": str,
    "bool": parse_bool,
    "bool | None": parse_bool,
}
COMMANDS: dict[str, type] = {"serve": ServerConfig, "optimize": OptimizeConfig}


USAGE = "Serve PyTorch vision models over HTTP, fast: every task installed, or your own; KServe v2, metrics."
EXAMPLES = """examples:
  torchrest serve                                   the built-in EfficientNet-Lite0 on :8088
  curl localhost:8088/classify -F image=@cat.jpg    classify a photo
  torchrest optimize --calibration photos/          find the fastest faithful backend on this machine
  torchrest serve --model-repository model-repository
"""
SERVE_EXAMPLES = """examples:
  torchrest serve                                        EfficientNet-Lite0 (real ImageNet weights) on :8088
  torchrest serve --model resnet18 --weights r18.pth     a built-in architecture with your weights
  torchrest serve --model model.pt2 --labels labels.txt  your classifier (a torch.export program)
  torchrest serve --model yolov8n.onnx --task detect --input-size 640 --normalize unit   a detector
  torchrest serve --model-repository model-repository    every model folder `torchrest optimize` wrote
  TORCHREST_PORT=9000 torchrest serve                    any option from the environment
"""
OPTIMIZE_EXAMPLES = """examples:
  torchrest optimize --calibration photos/               EfficientNet-Lite0, every candidate
  torchrest optimize --model resnet18 --calibration photos/ --candidates torch-eager,openvino-fp32
  torchrest optimize --model yolov8n.pt2 --task detect --input-size 640 --normalize unit --calibration photos/
                                                         a detector, gated by its boxes (IoU 0.9)
  torchrest optimize --task classify,embed --calibration photos/   the default model, gated on its embeddings too
"""


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter):
    """Defaults shown after each flag's help; descriptions and examples kept as written."""


bound_defaults: dict[str, str] = {}  # each bound flag's default (the bounds given are those that differ)


def build_parser(tasks: Sequence[Any] = ()) -> argparse.ArgumentParser:
    """The CLI; `optimize` also takes every bound of `tasks`' fidelity gates as a flag of its own."""
    parser = argparse.ArgumentParser(
        prog="torchrest", description=USAGE, epilog=EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--version", action="version", version=f"torchrest {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    serve = commands.add_parser(
        "serve",
        help="serve a model over HTTP",
        description="Serve vision models: POST /<task> for each task served (GET / lists them), the Open "
        "Inference Protocol under /v2, GET /health, GET /metrics.",
        epilog=SERVE_EXAMPLES,
        formatter_class=HelpFormatter,
    )
    add_config_flags(serve, ServerConfig)
    optimize = commands.add_parser(
        "optimize",
        help="find the fastest faithful backend for a model on this machine",
        description="Measure every candidate backend on this machine (speed, and agreement with fp32 on "
        "held-out inputs), reject the unfaithful, and write the fastest as <out>/<model>/ for "
        "`torchrest serve --model-repository <out>`.",
        epilog=OPTIMIZE_EXAMPLES,
        formatter_class=HelpFormatter,
    )
    add_config_flags(optimize, OptimizeConfig)
    bound_defaults.update(add_bound_flags(optimize.add_argument_group(FIDELITY, GROUPS[FIDELITY]), tasks))
    return parser


def add_bound_flags(section: Any, tasks: Sequence[Any]) -> dict[str, str]:
    """One flag per bound of the tasks' gates (torchrest.tasks.fidelity.Bound), in the fidelity section, its
    default from TORCHREST_<NAME> when set; what is given lands in OptimizeConfig.bounds."""
    seen: set[str] = set()
    defaults: dict[str, str] = {}
    for task in tasks:
        for bound in task.fidelity.bounds:
            if bound.name in seen:
                continue
            seen.add(bound.name)
            env = env_name(bound.name)
            defaults[f"bound:{bound.name}"] = bound.default
            section.add_argument(
                bound.flag,
                dest=f"bound:{bound.name}",
                default=os.environ.get(env, bound.default),
                metavar="VALUE",
                help=f"{bound.help} [env {env}]".replace("%", "%%").replace("%%%%", "%%"),
            )
    return defaults


def bound_flags_tasks(argv: Sequence[str]) -> list[Any]:
    """The tasks whose bounds `optimize` offers as flags: every installed one, and those its --task names."""
    from torchrest.tasks.registry import UnknownTask, installed_tasks, tasks_named

    tasks = installed_tasks()
    named = argparse.ArgumentParser(add_help=False)
    named.add_argument("--task", default=os.environ.get(env_name("task"), ""))
    known, _ = named.parse_known_args(argv)
    try:
        tasks += [task for task in tasks_named(known.task) if task not in tasks]
    except UnknownTask:
        pass  # said in one line once the model loads
    return tasks


def add_config_flags(parser: argparse.ArgumentParser, kind: type) -> dict[str, Any]:
    """One flag per field of `kind`, in its section of --help (the field's `group`), its choices shown where
    it has a fixed set; the default comes from TORCHREST_<FIELD> when it is set."""
    specs = config_fields(kind)
    used = {spec.metadata["group"] for spec in specs}
    sections = {name: parser.add_argument_group(name, about) for name, about in GROUPS.items() if name in used}
    for spec in specs:
        convert = CONVERTERS[str(spec.type)]
        env = env_name(spec.name)
        default = convert(os.environ[env]) if env in os.environ else spec.default
        # a boolean field becomes a --flag / --no-flag pair; every other field takes a value
        style: dict[str, Any] = (
            {"action": argparse.BooleanOptionalAction} if convert is parse_bool else {"type": convert}
        )
        if spec.metadata["choices"]:  # shown, not enforced here: the config's validate() says what is wrong
            style["metavar"] = "{" + ",".join(spec.metadata["choices"]) + "}"
        sections[spec.metadata["group"]].add_argument(
            f"--{flag_name(spec.name)}",
            dest=spec.name,
            default=default,
            help=f"{spec.metadata['help']} [env {env}]",
            **style,
        )
    return sections


def synopsis(command: str, kind: type, width: int = 112) -> str:
    """`torchrest COMMAND [--flag DEFAULT] ...` for every option (optimize's: each installed task's bounds
    too), wrapped: docs/serving.md's and docs/optimize.md's flag synopses (a test keeps them equal to this)."""
    head = f"torchrest {command} "
    parts = []
    for spec in config_fields(kind):
        flag = flag_name(spec.name)
        if CONVERTERS[str(spec.type)] is parse_bool:
            parts.append(f"[--[no-]{flag}]")
        elif spec.default in (None, "", 0) and str(spec.type) != "float":
            value = "PATH" if "Path" in str(spec.type) else "N" if spec.type in ("int", "int | None") else "VALUE"
            parts.append(f"[--{flag} {value}]")
        else:
            parts.append(f"[--{flag} {spec.default}]")
    if kind is OptimizeConfig:
        from torchrest.tasks.registry import installed_tasks

        bounds = {bound.name: bound for task in installed_tasks() for bound in task.fidelity.bounds}
        parts += [f"[{bound.flag} {bound.default or 'VALUE'}]" for bound in bounds.values()]
    lines, line = [], head
    for part in parts:
        if len(line) + len(part) > width and line.strip():
            lines.append(line.rstrip())
            line = " " * len(head)
        line += part + " "
    return "\n".join([*lines, line.rstrip()])


def main(argv: Sequence[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    parser = build_parser(bound_flags_tasks(argv) if argv[:1] == ["optimize"] else ())
    try:
        args = parser.parse_args(argv)
    except ValueError as exc:  # a TORCHREST_* variable that does not parse
        print(f"torchrest: error: bad environment value: {exc}", file=sys.stderr)
        return 2
    if args.command is None:
        parser.print_help()
        return 2
    kind = COMMANDS[args.command]
    values = {spec.name: getattr(args, spec.name) for spec in config_fields(kind)}
    if kind is OptimizeConfig:  # the bounds given (from a flag or the environment), not those left at their default
        values["bounds"] = tuple(
            (key[6:], value)
            for key, value in vars(args).items()
            if key.startswith("bound:") and value != bound_defaults[key]
        )
    config = kind(**values)
    configure_logging(config.log_level, getattr(config, "log_format", TEXT), args.command)
    try:
        if isinstance(config, OptimizeConfig):
            return run_optimize(config)
        from torchrest.server import serve

        return serve(config)
    except (StartupError, ModelLoadError) as exc:
        print(f"torchrest: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


def run_optimize(config: OptimizeConfig) -> int:
    from torchrest.optimize import optimize

    outcome = optimize(config)
    report = outcome.report
    chosen = next(c for c in report.candidates if c.chosen)
    served = next((layout for layout in report.layouts if layout.chosen), None)
    baseline = next((layout for layout in report.layouts if layout.baseline), None)
    fidelity = ", ".join(f"{verdict.measure} {verdict.shown}" for verdict in chosen.verdicts)
    layout = f"; served as {served.layout.describe()}: {served.throughput:.1f} img/s in process" if served else ""
    if served and baseline:
        layout += f" ({served.throughput / baseline.throughput:.2f}x torch eager served without a layout)"
    print(
        f"chose {chosen.name}: {chosen.best_throughput:.1f} img/s at batch {chosen.best_batch_size} "
        f"({chosen.speedup:.2f}x torch eager), {fidelity}{layout}\n"
        f"wrote {outcome.folder} (report.md, report.png); serve it with: "
        f"torchrest serve --model-repository {outcome.folder.parent}"
    )
    for note in report.notes:
        print(f"note: {note}")
    return 0
