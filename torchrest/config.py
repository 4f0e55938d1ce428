"""The command line's options: frozen dataclasses parsed once at start-up (`serve`: ServerConfig, `optimize`:
OptimizeConfig, the model options both share: ModelSource).

Every option is written once, as a field with its default, help text and --help section (`group`) in the
field's metadata. The CLI flags (`--max-batch-size`) and the environment fallbacks
(`TORCHREST_MAX_BATCH_SIZE`) are derived from the fields (torchrest.cli); nothing deeper in the package reads
the environment (the user's cache folder, under $XDG_CACHE_HOME, is resolved here too:
ServerConfig.cache_folders). What a model's input is (torchrest.model_input) and what a model folder's config.json holds
(torchrest.models.repository) live beside the code that reads them.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from torchrest.cores import available_cores
from torchrest.logs import FORMATS as LOG_FORMATS
from torchrest.model_input import NORMALIZATIONS, RESIZES, InputSpec, input_size, input_spec

ENV_PREFIX = "TORCHREST_"

# the sections of --help, in order (each command shows those its options name), and what each holds
SERVING, MODELS, PROCESSES, LIMITS = "serving", "models", "processes", "limits"
SECURITY, OBSERVABILITY = "security", "observability"
SAMPLES, FIDELITY, MEASURING, OUTPUT = "samples", "fidelity", "measuring", "output"  # optimize's own
GROUPS = {
    SERVING: "where the server listens: HTTP, and gRPC beside it",
    MODELS: "which models, and how they are fed and run",
    PROCESSES: "processes, threads, model instances and batches",
    LIMITS: "queues, deadlines and sizes: past them a request is refused",
    SECURITY: "TLS, API keys, the admin token and browser origins",
    OBSERVABILITY: "logs, metrics and traces",
    SAMPLES: "the sample images: INT8 calibration, and the held-out inputs the fidelity check compares on",
    FIDELITY: "how close to fp32 a candidate must stay: each task's bounds (torchrest.tasks), its own flags",
    MEASURING: "what is measured, where, and for how long; how the served layout is chosen",
    OUTPUT: "where the result goes, and what is logged",
}
# the values an option takes where they are a fixed set (shown in --help)
DEVICES = ("cpu", "cuda", "cuda:N", "auto")
BUILT_IN_BACKENDS = ("auto", "eager")  # how a built-in model runs (torchrest.models.converted)
LOG_LEVELS = ("debug", "info", "warning", "error")
OBJECTIVES = ("throughput", "latency")


def option(default: Any, help: str, *, group: str, choices: tuple[str, ...] = ()) -> Any:
    """A config field whose CLI flag and environment variable are derived from its name, shown in --help in
    the section `group` (a key of GROUPS), with its `choices` where it has a fixed set."""
    assert group in GROUPS, group
    return field(default=default, metadata={"help": help, "group": group, "choices": choices})


@dataclass(frozen=True, slots=True)
class ModelSource:
    """Which model to load and how to feed it: the options `serve` and `optimize` share."""

    model: str | None = option(
        "efficientnet_lite0", "built-in model name or model file (.pt2, ONNX, TorchScript)", group=MODELS
    )
    weights: Path | None = option(
        None, "state-dict file for a built-in model (torchvision keys for resnet18)", group=MODELS
    )
    labels: Path | None = option(None, "class names, one per line (or a JSON list); default ImageNet-1k", group=MODELS)
    task: str = option(
        "",
        "what a model file is for: an installed task's name (GET / lists them; default: the seed's classifier) "
        "or your own as package.module:Class (docs/tasks.md); several, comma-separated, read its outputs in order",
        group=MODELS,
    )
    input_size: str = option(
        "224", "a model file's input: N (square) or HEIGHTxWIDTH, e.g. 640 or 480x640", group=MODELS
    )
    resize: str = option(
        "",
        "how images are fitted to a model file's input: crop (the shorter side resized, then the centre), "
        "letterbox (all of it, aspect kept, padded with grey 114) or stretch (default: the task's own)",
        group=MODELS,
        choices=RESIZES,
    )
    resize_size: int = option(
        0, "crop: the shorter side before the centre crop (0: 8/7 of the input, 224 -> 256)", group=MODELS
    )
    normalize: str = option(
        "",
        "a model file's input: imagenet (mean and std) or unit (pixels / 255) (default: the task's own)",
        group=MODELS,
        choices=tuple(NORMALIZATIONS),
    )

    @property
    def input_spec(self) -> InputSpec:
        """The model file's input, as the flags say, its first task's defaults otherwise (ValueError with a
        one-line reason, an unknown task's too)."""
        from torchrest.tasks.registry import first_task  # imports the task's module: only when asked

        task = first_task(self.task)
        resize, normalize = self.resize or task.resize, self.normalize or task.normalize
        if refused := task.fit_refused(resize):
            raise ValueError(refused)
        return input_spec(input_size(self.input_size), self.resize_size, resize, normalize)


@dataclass(frozen=True, slots=True)
class ServerConfig(ModelSource):
    model: str | None = option(
        None,
        "built-in model name or model file (.pt2, ONNX; TorchScript deprecated) (default efficientnet_lite0); "
        "with --model-repository, the one model of it to load at start-up (the others stay loadable through "
        "the repository API)",
        group=MODELS,
    )
    model_repository: Path | None = option(
        None, "serve every model folder of this repository (the layout `torchrest optimize` writes)", group=MODELS
    )
    default_model: str | None = option(
        None, "the model a task's route asks when a request names none (default: the first)", group=MODELS
    )
    model_name: str | None = option(
        None, "serve the one model under this name (KServe passes the InferenceService's name)", group=MODELS
    )
    host: str = option("0.0.0.0", "address to listen on", group=SERVING)
    port: int = option(8088, "port to listen on (0: a free one, which the log's serving line names)", group=SERVING)
    workers: int = option(
        0,
        "front-end processes serving HTTP and gRPC, feeding one engine process that holds the models (0: one "
        "process on a CPU; on a GPU one per two cores, up to 8; 1: everything in one process)",
        group=PROCESSES,
    )
    device: str = option("cpu", "cpu, cuda, cuda:N, or auto (cuda when available)", group=MODELS, choices=DEVICES)
    backend: str = option(
        "auto",
        "how a built-in model runs: auto (on a CPU, OpenVINO fp32, converted from torch at the first start and "
        "cached: the same answers, several times faster; torch elsewhere) or eager (torch, the reference)",
        group=MODELS,
        choices=BUILT_IN_BACKENDS,
    )
    cache_dir: Path | None = option(
        None,
        "where a built-in model's converted form (--backend auto) is cached: made at the first start, read by "
        "later ones (default: $XDG_CACHE_HOME/torchrest, i.e. ~/.cache/torchrest, which is also read, and "
        "written where this folder cannot be)",
        group=MODELS,
    )
    max_batch_size: int = option(
        0,
        "largest batch an instance runs at once (0: the model's config.json layout, else 32, timed at start-up)",
        group=PROCESSES,
    )
    tune_batch: bool | None = option(
        None,
        "at start-up, cap batches at the size with the best measured throughput (default: only when config.json "
        "has no batch cap; --no-tune-batch: never)",
        group=PROCESSES,
    )
    max_wait_ms: float = option(0.0, "extra time a lone request waits for company (0: run at once)", group=PROCESSES)
    instances: int = option(
        0,
        "instances of each model, each with its own inference thread (0: the model's config.json layout, else 1)",
        group=PROCESSES,
    )
    threads: int = option(0, "thread budget of the models' instances (0: one per core)", group=PROCESSES)
    preprocess_threads: int = option(0, "threads that decode images (0: one per core)", group=PROCESSES)
    decode_ahead: bool = option(
        True,
        "decode each image as soon as it is queued, overlapping the model's run (off: when its batch runs)",
        group=PROCESSES,
    )
    event_loop_nice: int = option(
        10,
        "nice value added to the event loop's thread, so that the model keeps the cores under overload (0: off)",
        group=PROCESSES,
    )
    max_queue: int = option(256, "admitted requests per model (decoding or queued) before 503", group=LIMITS)
    refusal_budget: float = option(
        0.1,
        "about the share of one core that answering 503 queue_full may take in each serving process (as the "
        "handler measures it): past "
        "it, refusals wait their turn (up to their Retry-After) with their connections held, so that a retry "
        "storm cannot starve the model (0: refuse at once, unpaced)",
        group=LIMITS,
    )
    max_connections: int = option(
        0,
        "open connections per process that serves HTTP (each front-end); past it a new connection gets 503 and is "
        "closed (0: what the file descriptor limit allows, less a reserve)",
        group=LIMITS,
    )
    timeout_ms: int = option(10_000, "deadline for a request to reach the model; past it, 504", group=LIMITS)
    drain_timeout: int = option(30, "on SIGTERM, seconds to finish admitted requests before exiting", group=LIMITS)
    read_timeout: float = option(
        30.0,
        "seconds a client has to send a request's headers, and again its body; past it, 408 and close",
        group=LIMITS,
    )
    max_body_mb: float = option(20.0, "largest request body accepted, in MiB; past it, 413", group=LIMITS)
    max_receiving_mb: float = option(
        512.0,
        "request body bytes being received at once, all of a process's connections together, in MiB; past it, 503 "
        "(a slow upload costs what it has sent; a body read in full counts against its model's queue instead)",
        group=LIMITS,
    )
    max_image_megapixels: float = option(64.0, "largest decoded image, in megapixels; past it, 413", group=LIMITS)
    admin_token_file: Path | None = option(
        None,
        "file holding the token repository load/unload require (Authorization: Bearer); without one, they are off",
        group=SECURITY,
    )
    admin_token: str | None = option(
        None, "the admin token itself (prefer the file: a flag shows in the process list)", group=SECURITY
    )
    api_keys_file: Path | None = option(
        None,
        "API keys, one per line (# comments), re-read when the file changes; when set, inference needs one",
        group=SECURITY,
    )
    metrics_port: int | None = option(
        None,
        "serve /metrics on this port instead of the main one (default: the main port; 0: a free one, named in the log)",
        group=OBSERVABILITY,
    )
    grpc_port: int | None = option(
        None,
        "serve the Open Inference Protocol over gRPC on this port too (default: off; 0: a free one, named in the log)",
        group=SERVING,
    )
    ssl_certfile: Path | None = option(None, "TLS certificate chain (PEM): serve HTTPS", group=SECURITY)
    ssl_keyfile: Path | None = option(None, "TLS private key (PEM) for --ssl-certfile", group=SECURITY)
    ssl_ca_certs: Path | None = option(
        None, "CA bundle (PEM): clients must present a certificate it signed", group=SECURITY
    )
    cors_origins: str = option(
        "", "browser origins allowed to call the API, comma-separated, or * (default: none)", group=SECURITY
    )
    log_level: str = option("info", "debug, info, warning or error", group=OBSERVABILITY, choices=LOG_LEVELS)
    log_format: str = option(
        "text",
        "text, or json: one JSON object per line, with a line per answered request (torchrest.logs)",
        group=OBSERVABILITY,
        choices=LOG_FORMATS,
    )
    tracing: bool = option(
        False,
        "OpenTelemetry traces of requests and batches, exported over OTLP as the OTEL_* variables say "
        "(needs the `tracing` extra)",
        group=OBSERVABILITY,
    )

    @property
    def max_body_bytes(self) -> int:
        return int(self.max_body_mb * 1024 * 1024)

    @property
    def max_receiving_bytes(self) -> int:
        return int(self.max_receiving_mb * 1024 * 1024)

    @property
    def max_image_pixels(self) -> int:
        return int(self.max_image_megapixels * 1_000_000)

    @property
    def total_threads(self) -> int:
        return self.threads if self.threads > 0 else available_cores()

    @property
    def threads_per_instance(self) -> int:
        """For one model without a tuned layout (a built-in model): the budget split between its instances."""
        return max(1, self.total_threads // max(1, self.instances))

    @property
    def decode_threads(self) -> int:
        return self.preprocess_threads if self.preprocess_threads > 0 else available_cores()

    @property
    def cache_folders(self) -> tuple[Path, ...]:
        """Where a built-in model's converted form is looked for, in order, the first that can be written
        taking a new one (torchrest.models.converted): --cache-dir, then the user's cache."""
        user = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "torchrest"
        return tuple(dict.fromkeys([self.cache_dir, user] if self.cache_dir is not None else [user]))

    def validate(self) -> None:
        """Raise ValueError with a one-line reason for values no server can run with."""
        positive = ("max_queue", "timeout_ms")
        if self.log_format not in LOG_FORMATS:
            raise ValueError(f"--log-format must be text or json, got {self.log_format!r}")
        if self.backend not in BUILT_IN_BACKENDS:
            raise ValueError(f"--backend must be auto or eager, got {self.backend!r}")
        if self.workers < 0:
            raise ValueError(f"--workers must be at least 1 (or 0: chosen by cores and device), got {self.workers}")
        if self.workers > available_cores():
            raise ValueError(
                f"--workers {self.workers} is more than the {available_cores()} cores this process may use"
            )
        for name in positive:
            if getattr(self, name) <= 0:
                raise ValueError(f"--{flag_name(name)} must be positive, got {getattr(self, name)}")
        if not 0 <= self.event_loop_nice <= 19:
            raise ValueError("--event-loop-nice must be from 0 to 19")
        if self.max_wait_ms < 0 or self.threads < 0 or self.preprocess_threads < 0 or self.drain_timeout < 0:
            raise ValueError("--max-wait-ms, --threads, --preprocess-threads and --drain-timeout cannot be negative")
        if self.instances < 0 or self.max_batch_size < 0:
            raise ValueError("--instances and --max-batch-size cannot be negative (0: the model's config.json layout)")
        if not 0 <= self.refusal_budget <= 1:
            raise ValueError("--refusal-budget must be from 0 (unpaced) to 1 (a whole core)")
        if self.max_connections < 0:
            raise ValueError("--max-connections cannot be negative (0: from the file descriptor limit)")
        if self.max_body_mb <= 0 or self.max_image_megapixels <= 0 or self.read_timeout <= 0:
            raise ValueError("--max-body-mb, --max-image-megapixels and --read-timeout must be positive")
        if self.max_receiving_mb < self.max_body_mb:
            raise ValueError("--max-receiving-mb must be at least --max-body-mb: one largest body must fit")
        if self.resize_size < 0:
            raise ValueError("--resize-size cannot be negative (0: 8/7 of the input)")
        try:
            self.input_spec  # noqa: B018 - the model file's input, checked once here
        except ValueError as exc:
            raise ValueError(f"--task, --input-size, --resize or --normalize: {exc}") from None
        ports = {"port": self.port, "metrics_port": self.metrics_port, "grpc_port": self.grpc_port}
        for name, port in ports.items():
            if port is not None and not 0 <= port <= 65535:
                raise ValueError(f"--{flag_name(name)} must be from 0 (a free port) to 65535, got {port}")
        fixed = [port for port in ports.values() if port]
        if len(fixed) != len(set(fixed)):
            raise ValueError("--port, --metrics-port and --grpc-port must differ")
        if (self.ssl_certfile is None) != (self.ssl_keyfile is None):
            raise ValueError("--ssl-certfile and --ssl-keyfile go together")
        if self.ssl_ca_certs is not None and self.ssl_certfile is None:
            raise ValueError("--ssl-ca-certs (client certificates) needs --ssl-certfile and --ssl-keyfile")
        if self.admin_token is not None and self.admin_token_file is not None:
            raise ValueError("give the admin token once: --admin-token-file or TORCHREST_ADMIN_TOKEN")
        if self.admin_token is not None and len(self.admin_token.strip()) < 16:
            raise ValueError("the admin token must be at least 16 characters")

    @property
    def cors_origin_list(self) -> list[str]:
        return [origin.strip().rstrip("/") for origin in self.cors_origins.split(",") if origin.strip()]


@dataclass(frozen=True, slots=True)
class OptimizeConfig(ModelSource):
    calibration: Path | None = option(
        None, "folder of sample images: INT8 calibration and the fidelity set", group=SAMPLES
    )
    out: Path = option(Path("model-repository"), "model repository to write <out>/<model>/ into", group=OUTPUT)
    batch_sizes: str = option(
        "auto",
        "batch sizes to measure throughput at (auto: 1,2,4,8,16,32, up to 8 for inputs larger than 320 x 320)",
        group=MEASURING,
    )
    # each task's fidelity bounds, as given (name -> text): their flags come from the tasks (torchrest.cli)
    bounds: tuple[tuple[str, str], ...] = field(default=(), metadata={"flag": False})
    device: str = option("cpu", "cpu, cuda, cuda:N, or auto (cuda when available)", group=MEASURING, choices=DEVICES)
    threads: int = option(
        0, "threads every candidate may use, as the server gives them (0: one per core)", group=MEASURING
    )
    candidates: str = option("all", "comma-separated candidate names to try (see report.md), or all", group=MEASURING)
    fidelity_samples: int = option(256, "held-out inputs the fidelity check compares on (at least 200)", group=SAMPLES)
    calibration_samples: int = option(128, "inputs INT8 calibration sees", group=SAMPLES)
    seconds_per_point: float = option(
        2.0, "time spent measuring each batch size of each candidate, and each served layout", group=MEASURING
    )
    objective: str = option(
        "throughput",
        "throughput (the most img/s whose lone-request p50 is within 2x the quickest) or latency (the quickest "
        "lone request): how the served layout is chosen",
        group=MEASURING,
        choices=OBJECTIVES,
    )
    log_level: str = option("warning", "debug, info, warning or error", group=OUTPUT, choices=LOG_LEVELS)

    @property
    def total_threads(self) -> int:
        return self.threads if self.threads > 0 else available_cores()

    def batch_size_list(self, input_pixels: int = 224 * 224) -> list[int]:
        """The sizes to measure; `auto` stops at 8 for a large input (a detector's 640 x 640 batch of 32 is
        39 MB of pixels and seconds a call, and no faster per image on a CPU)."""
        if self.batch_sizes.strip() == "auto":
            return [1, 2, 4, 8] if input_pixels > 320 * 320 else [1, 2, 4, 8, 16, 32]
        try:
            sizes = sorted({int(part) for part in self.batch_sizes.split(",") if part.strip()})
        except ValueError:
            raise ValueError(f"--batch-sizes must be comma-separated integers, got {self.batch_sizes!r}") from None
        if not sizes or sizes[0] <= 0:
            raise ValueError(f"--batch-sizes must list positive integers, got {self.batch_sizes!r}")
        return sizes

    def bound_values(self, tasks: Any) -> dict[str, float | None]:
        """Every bound of these tasks' gates: as given, else its default (ValueError naming its flag)."""
        given = dict(self.bounds)
        return {
            bound.name: bound.parse(given.get(bound.name, bound.default))
            for task in tasks
            for bound in task.fidelity.bounds
        }

    def validate(self) -> None:
        self.batch_size_list()
        if self.calibration is None:
            raise ValueError("--calibration DIR is required: a folder of sample images")
        if self.fidelity_samples <= 0 or self.calibration_samples <= 0 or self.seconds_per_point <= 0:
            raise ValueError("--fidelity-samples, --calibration-samples and --seconds-per-point must be positive")
        if self.threads < 0:
            raise ValueError("--threads cannot be negative")
        if self.objective not in OBJECTIVES:
            raise ValueError(f"--objective must be throughput or latency, got {self.objective!r}")
        from torchrest.tasks.registry import tasks_named  # imports the tasks' modules: only when asked

        self.input_spec  # noqa: B018 - its tasks found, its input checked
        self.bound_values(tasks_named(self.task))


def flag_name(field_name: str) -> str:
    return field_name.replace("_", "-")


def env_name(field_name: str) -> str:
    return ENV_PREFIX + field_name.upper()


def config_fields(kind: type = ServerConfig) -> list[Any]:
    """The fields that are options (a flag and a variable each)."""
    return [spec for spec in fields(kind) if spec.metadata.get("flag", True)]
