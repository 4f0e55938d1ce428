"""Configuration: frozen dataclasses parsed once at start-up.

Every server option is written once, as a field of `ServerConfig` with its default and help text in the
field's metadata. The CLI flags (`--max-batch-size`) and the environment fallbacks
(`TORCHREST_MAX_BATCH_SIZE`) are derived from the fields; nothing deeper in the package reads the
environment.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from torchrest.cores import available_cores
from torchrest.tasks import default_resize, task_names

ENV_PREFIX = "TORCHREST_"
# a model's uint8 input normalised with torchvision's ImageNet statistics ("imagenet"), or pixels / 255 ("unit")
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
IMAGENET, UNIT = "imagenet", "unit"
NORMALIZATIONS = {IMAGENET: (IMAGENET_MEAN, IMAGENET_STD), UNIT: ((0.0, 0.0, 0.0), (1.0, 1.0, 1.0))}
# how an image is fitted to the model's input (torchrest.resize)
CROP, LETTERBOX, STRETCH = "crop", "letterbox", "stretch"
RESIZES = (CROP, LETTERBOX, STRETCH)
LETTERBOX_FILL = 114  # the grey Ultralytics pads with


def option(default: Any, help: str, *, flag: str | None = None) -> Any:
    """A config field whose CLI flag and environment variable are derived from its name."""
    return field(default=default, metadata={"help": help, "flag": flag})


@dataclass(frozen=True, slots=True)
class InputSpec:
    """How a model wants its pixels: its input's size (a square `crop_size`, or `height` x `width`), how an
    image is fitted to it (crop: the shorter side resized to `resize_size`, then the centre; letterbox: the
    whole image, padded with `fill`; stretch), and how its uint8 RGB pixels are normalised."""

    crop_size: int = 224
    resize_size: int = 256
    height: int = 0  # with width: a non-square input (0: crop_size)
    width: int = 0
    resize: str = CROP
    normalize: str = IMAGENET
    fill: int = LETTERBOX_FILL

    @property
    def size(self) -> tuple[int, int]:
        """(height, width) of the model's input."""
        return (self.height or self.crop_size, self.width or self.crop_size)

    @property
    def mean_std(self) -> tuple[tuple[float, ...], tuple[float, ...]]:
        return NORMALIZATIONS[self.normalize]

    def check(self) -> None:
        """ValueError with a one-line reason for a spec no image can be fitted to."""
        height, width = self.size
        if min(height, width) < 1 or max(height, width) > 8192:
            raise ValueError(f"the input size must be 1 to 8192 pixels a side, got {height}x{width}")
        if self.resize not in RESIZES:
            raise ValueError(f"resize must be one of {', '.join(RESIZES)}, got {self.resize!r}")
        if self.normalize not in NORMALIZATIONS:
            raise ValueError(f"normalize must be one of {', '.join(NORMALIZATIONS)}, got {self.normalize!r}")
        if self.resize == CROP and self.resize_size < max(height, width):
            raise ValueError(f"the crop's resize size ({self.resize_size}) must be at least the input's side")
        if not 0 <= self.fill <= 255:
            raise ValueError(f"the letterbox fill must be a grey level from 0 to 255, got {self.fill}")


def input_size(text: str | int | list[int]) -> tuple[int, int]:
    """640, "640", "480x640" or [480, 640] -> (height, width); ValueError otherwise."""
    if isinstance(text, list) and len(text) == 2 and all(isinstance(side, int) for side in text):
        return text[0], text[1]
    if isinstance(text, int) and not isinstance(text, bool):
        return text, text
    parts = str(text).lower().replace(" ", "").split("x")
    if len(parts) in (1, 2) and all(part.isdigit() for part in parts):
        return int(parts[0]), int(parts[-1])
    raise ValueError(f"input size must be N (square) or HEIGHTxWIDTH, got {text!r}")


def input_spec(
    size: tuple[int, int], resize_size: int, resize: str, normalize: str, fill: int = LETTERBOX_FILL
) -> InputSpec:
    """A checked InputSpec (ValueError otherwise); resize_size 0: 8/7 of the input's longer side (224 -> 256)."""
    height, width = size
    square = height == width
    spec = InputSpec(
        crop_size=height if square else max(height, width),
        resize_size=resize_size or max(height, width) * 8 // 7,
        height=0 if square else height,
        width=0 if square else width,
        resize=resize,
        normalize=normalize,
        fill=fill,
    )
    spec.check()
    return spec


@dataclass(frozen=True, slots=True)
class ModelSource:
    """Which model to load and how to feed it: the options `serve` and `optimize` share."""

    model: str | None = option("efficientnet_lite0", "built-in model name or model file (.pt2, ONNX, TorchScript)")
    weights: Path | None = option(None, "state-dict file for a built-in model (torchvision keys for resnet18)")
    labels: Path | None = option(None, "class names, one per line (or a JSON list); default ImageNet-1k")
    task: str = option(
        "classify",
        "what a model file is for: classify, detect, segment or embed (or several, comma-separated, reading its "
        "outputs in order, e.g. classify,embed)",
    )
    input_size: str = option("224", "a model file's input: N (square) or HEIGHTxWIDTH, e.g. 640 or 480x640")
    resize: str = option(
        "",
        "how images are fitted to a model file's input: crop (the shorter side resized, then the centre), "
        "letterbox (all of it, aspect kept, padded with grey 114) or stretch (default: crop to classify or "
        "embed, letterbox to detect or segment)",
    )
    resize_size: int = option(0, "crop: the shorter side before the centre crop (0: 8/7 of the input, 224 -> 256)")
    normalize: str = option("imagenet", "a model file's input: imagenet (mean and std) or unit (pixels / 255)")

    @property
    def input_spec(self) -> InputSpec:
        """The model file's input, as the flags say (ValueError with a one-line reason)."""
        resize = self.resize or default_resize(self.task)
        return input_spec(input_size(self.input_size), self.resize_size, resize, self.normalize)


@dataclass(frozen=True, slots=True)
class ServerConfig(ModelSource):
    model: str | None = option(
        None,
        "built-in model name or model file (.pt2, ONNX; TorchScript deprecated) (default efficientnet_lite0); "
        "with --model-repository, the one model of it to load at start-up (the others stay loadable through "
        "the repository API)",
    )
    model_repository: Path | None = option(
        None, "serve every model folder of this repository (the layout `torchrest optimize` writes)"
    )
    default_model: str | None = option(None, "the model /classify uses when a request names none (default: the first)")
    model_name: str | None = option(
        None, "serve the one model under this name (KServe passes the InferenceService's name)"
    )
    host: str = option("0.0.0.0", "address to listen on")
    port: int = option(8088, "port to listen on")
    workers: int = option(
        0,
        "front-end processes serving HTTP and gRPC, feeding one engine process that holds the models (0: one "
        "process on a CPU; on a GPU one per two cores, up to 8; 1: everything in one process)",
    )
    device: str = option("cpu", "cpu, cuda, cuda:N, or auto (cuda when available)")
    backend: str = option(
        "auto",
        "how a built-in model runs: auto (on a CPU, OpenVINO fp32, converted from torch at the first start and "
        "cached: the same answers, several times faster; torch elsewhere) or eager (torch, the reference)",
    )
    max_batch_size: int = option(
        0, "largest batch an instance runs at once (0: the model's config.json layout, else 32, timed at start-up)"
    )
    tune_batch: bool | None = option(
        None,
        "at start-up, cap batches at the size with the best measured throughput (default: only when config.json "
        "has no batch cap; --no-tune-batch: never)",
    )
    max_wait_ms: float = option(0.0, "extra time a lone request waits for company (0: run at once)")
    instances: int = option(
        0, "instances of each model, each with its own inference thread (0: the model's config.json layout, else 1)"
    )
    threads: int = option(0, "thread budget of the models' instances (0: one per core)")
    preprocess_threads: int = option(0, "threads that decode images (0: one per core)")
    decode_ahead: bool = option(
        True, "decode each image as soon as it is queued, overlapping the model's run (off: when its batch runs)"
    )
    event_loop_nice: int = option(
        10, "nice value added to the event loop's thread, so that the model keeps the cores under overload (0: off)"
    )
    max_queue: int = option(256, "admitted requests per model (decoding or queued) before 503")
    refusal_budget: float = option(
        0.1,
        "about the share of one core that answering 503 queue_full may take in each serving process (as the "
        "handler measures it): past "
        "it, refusals wait their turn (up to their Retry-After) with their connections held, so that a retry "
        "storm cannot starve the model (0: refuse at once, unpaced)",
    )
    max_connections: int = option(
        0,
        "open connections per process that serves HTTP (each front-end); past it a new connection gets 503 and is "
        "closed (0: what the file descriptor limit allows, less a reserve)",
    )
    timeout_ms: int = option(10_000, "deadline for a request to reach the model; past it, 504")
    drain_timeout: int = option(30, "on SIGTERM, seconds to finish admitted requests before exiting")
    read_timeout: float = option(
        30.0, "seconds a client has to send a request's headers, and again its body; past it, 408 and close"
    )
    max_body_mb: float = option(20.0, "largest request body accepted, in MiB; past it, 413")
    max_receiving_mb: float = option(
        512.0,
        "request body bytes being received at once, all of a process's connections together, in MiB; past it, 503 "
        "(a slow upload costs what it has sent; a body read in full counts against its model's queue instead)",
    )
    max_image_megapixels: float = option(64.0, "largest decoded image, in megapixels; past it, 413")
    admin_token_file: Path | None = option(
        None, "file holding the token repository load/unload require (Authorization: Bearer); without one, they are off"
    )
    admin_token: str | None = option(None, "the admin token itself (prefer the file: a flag shows in the process list)")
    api_keys_file: Path | None = option(
        None, "API keys, one per line (# comments), re-read when the file changes; when set, inference needs one"
    )
    metrics_port: int = option(0, "serve /metrics on this port instead of the main one (0: the main port)")
    grpc_port: int = option(0, "serve the Open Inference Protocol over gRPC on this port too (0: off)")
    ssl_certfile: Path | None = option(None, "TLS certificate chain (PEM): serve HTTPS")
    ssl_keyfile: Path | None = option(None, "TLS private key (PEM) for --ssl-certfile")
    ssl_ca_certs: Path | None = option(None, "CA bundle (PEM): clients must present a certificate it signed")
    cors_origins: str = option("", "browser origins allowed to call the API, comma-separated, or * (default: none)")
    log_level: str = option("info", "debug, info, warning or error")
    log_format: str = option(
        "text", "text, or json: one JSON object per line, with a line per answered request (torchrest.logs)"
    )
    tracing: bool = option(
        False,
        "OpenTelemetry traces of requests and batches, exported over OTLP as the OTEL_* variables say "
        "(needs the `tracing` extra)",
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

    def validate(self) -> None:
        """Raise ValueError with a one-line reason for values no server can run with."""
        positive = ("port", "max_queue", "timeout_ms")
        if self.log_format not in ("text", "json"):
            raise ValueError(f"--log-format must be text or json, got {self.log_format!r}")
        if self.backend not in ("auto", "eager"):
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
        if not 0 <= self.metrics_port <= 65535 or (self.metrics_port and self.metrics_port == self.port):
            raise ValueError("--metrics-port must be 0 or a port other than --port")
        if not 0 <= self.grpc_port <= 65535 or (self.grpc_port and self.grpc_port in (self.port, self.metrics_port)):
            raise ValueError("--grpc-port must be 0 or a port other than --port and --metrics-port")
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
    calibration: Path | None = option(None, "folder of sample images: INT8 calibration and the fidelity set")
    out: Path = option(Path("model-repository"), "model repository to write <out>/<model>/ into")
    batch_sizes: str = option(
        "auto",
        "batch sizes to measure throughput at (auto: 1,2,4,8,16,32, up to 8 for inputs larger than 320 x 320)",
    )
    max_top1_disagreement: str = option("1%", "classify: reject a candidate whose top-1 differs from fp32 more often")
    max_accuracy_drop: str = option(
        "",
        "with labelled photos (--calibration holding class-named sub-folders): reject a candidate whose top-1 "
        "accuracy on them is more than this below fp32's (e.g. 0.5%%), instead of judging agreement",
    )
    min_cosine: float = option(0.99, "embed: the lowest cosine similarity to fp32's embedding a candidate may give")
    min_neighbours_kept: str = option(
        "99%", "embed: the share of held-out inputs whose nearest neighbour (by cosine) must stay fp32's"
    )
    min_box_match: str = option(
        "99%", "detect: the share of fp32's boxes a candidate must match (same class, IoU at least --box-iou)"
    )
    box_iou: float = option(0.9, "detect: the IoU at which a candidate's box matches fp32's")
    max_extra_boxes: str = option("1%", "detect: unmatched candidate boxes allowed, per fp32 box")
    min_pixel_agreement: str = option("99%", "segment: the share of pixels whose class must stay fp32's")
    device: str = option("cpu", "cpu, cuda, cuda:N, or auto (cuda when available)")
    threads: int = option(0, "threads every candidate may use, as the server gives them (0: one per core)")
    candidates: str = option("all", "comma-separated candidate names to try (see report.md), or all")
    fidelity_samples: int = option(256, "held-out inputs the fidelity check compares on (at least 200)")
    calibration_samples: int = option(128, "inputs INT8 calibration sees")
    seconds_per_point: float = option(
        2.0, "time spent measuring each batch size of each candidate, and each served layout"
    )
    objective: str = option(
        "throughput",
        "throughput (the most img/s whose lone-request p50 is within 2x the quickest) or latency (the quickest "
        "lone request): how the served layout is chosen",
    )
    log_level: str = option("warning", "debug, info, warning or error")

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

    def disagreement_bound(self) -> float:
        """'1%' or '0.01' -> 0.01."""
        return _share(self.max_top1_disagreement, "--max-top1-disagreement")

    def task_bounds(self) -> dict[str, float]:
        """The bounds of the other tasks' gates, as fractions (ValueError with the flag's name otherwise)."""
        bounds = {
            "min_neighbours_kept": _share(self.min_neighbours_kept, "--min-neighbours-kept"),
            "min_box_match": _share(self.min_box_match, "--min-box-match"),
            "max_extra_boxes": _share(self.max_extra_boxes, "--max-extra-boxes"),
            "min_pixel_agreement": _share(self.min_pixel_agreement, "--min-pixel-agreement"),
        }
        if not -1 <= self.min_cosine <= 1:
            raise ValueError(f"--min-cosine must be from -1 to 1, got {self.min_cosine}")
        if not 0 < self.box_iou <= 1:
            raise ValueError(f"--box-iou must be above 0 and at most 1, got {self.box_iou}")
        return bounds | {"min_cosine": self.min_cosine, "box_iou": self.box_iou}

    def accuracy_drop(self) -> float | None:
        """'0.5%' -> 0.005; None when not set (candidates are judged by agreement)."""
        return _share(self.max_accuracy_drop, "--max-accuracy-drop") if self.max_accuracy_drop.strip() else None

    def validate(self) -> None:
        self.batch_size_list()
        self.disagreement_bound()
        self.accuracy_drop()
        self.task_bounds()
        if self.calibration is None:
            raise ValueError("--calibration DIR is required: a folder of sample images")
        if self.fidelity_samples <= 0 or self.calibration_samples <= 0 or self.seconds_per_point <= 0:
            raise ValueError("--fidelity-samples, --calibration-samples and --seconds-per-point must be positive")
        if self.threads < 0:
            raise ValueError("--threads cannot be negative")
        if self.objective not in ("throughput", "latency"):
            raise ValueError(f"--objective must be throughput or latency, got {self.objective!r}")
        task_names(self.task)


@dataclass(frozen=True, slots=True)
class ModelConfig:
    """What a model folder's config.json holds: how to load its artifact and how to feed it.

    optimize's artifacts take (N, crop, crop, 3) uint8 and return (N, classes) logits, normalisation inside;
    a folder written by hand may hold a network that takes (N, 3, H, W) float (normalised as `normalize`
    says) and serves any task (`task`: its outputs are checked against it when it loads).
    """

    name: str
    backend: str  # a key of torchrest.backends.BACKENDS (its BackendKind.name)
    artifact: str  # relative to the model folder
    precision: str = "fp32"  # fp32, bf16, fp16, int8
    crop_size: int = 224  # the square input (input_size, when given, says otherwise)
    resize_size: int = 0  # crop: the shorter side before the centre crop (0: 8/7 of the input's side)
    task: str = "classify"  # or detect, segment, embed; several comma-separated read the outputs in order
    input_size: int | str | list[int] | None = None  # 640, "480x640" or [480, 640]
    resize: str = ""  # crop, letterbox or stretch (default: the first task's)
    normalize: str = IMAGENET  # or unit: what a float network expects (artifacts with a uint8 input ignore it)
    fill: int = LETTERBOX_FILL
    labels: str = "labels.txt"  # relative to the model folder
    candidate: str = ""  # the optimize candidate that produced it
    batch_sizes: tuple[int, ...] = ()  # the sizes optimize measured
    best_batch_size: int = 0
    threads: int = 0  # the thread budget it was tuned with
    backend_options: dict[str, str] = field(default_factory=dict)
    source: str = ""
    layout: dict[str, int] | None = None  # the serving layout optimize chose (torchrest.layout.Layout)
    objective: str = ""  # what that layout was chosen for: throughput or latency
    # both ends, as optimize measured them: batch-1 ms on the whole budget, a lone request's p50 and img/s
    # in the served layout (its batches kept full)
    measured: dict[str, float] = field(default_factory=dict)
    # what optimize's gate measured for the artifact served, against the fp32 reference (torchrest.optimize.gates):
    # the model's first task's {task, measure, value, bound}, then any other task's
    fidelity: dict[str, Any] = field(default_factory=dict)
    fidelity_other_tasks: list[dict[str, Any]] = field(default_factory=list)
    speedup_vs_eager: float = 0.0  # what it serves, in img/s, over torch eager's (optimize measured both)

    @property
    def input_spec(self) -> InputSpec:
        """ValueError with a one-line reason when the fields do not make one."""
        size = input_size(self.input_size) if self.input_size is not None else (self.crop_size, self.crop_size)
        return input_spec(size, self.resize_size, self.resize or default_resize(self.task), self.normalize, self.fill)

    def write(self, path: Path) -> None:
        path.write_text(json.dumps(asdict(self), indent=2) + "\n")

    @classmethod
    def read(cls, path: Path) -> ModelConfig:
        """Raises ValueError with a one-line reason for a missing, malformed or incomplete file."""
        try:
            raw = json.loads(path.read_text())
        except FileNotFoundError:
            raise ValueError(f"{path} not found") from None
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise ValueError(f"{path} is not readable JSON: {exc}") from None
        if not isinstance(raw, dict):
            raise ValueError(f"{path} must hold a JSON object")
        known = {spec.name for spec in fields(cls)}
        missing = [name for name in ("name", "backend", "artifact") if name not in raw]
        if missing:
            raise ValueError(f"{path} lacks {', '.join(missing)}")
        try:
            values = {key: value for key, value in raw.items() if key in known}
            values["batch_sizes"] = tuple(values.get("batch_sizes", ()))
            return cls(**values)
        except TypeError as exc:
            raise ValueError(f"{path}: {exc}") from None


def _share(text: str, flag: str) -> float:
    """'1%' or '0.01' -> 0.01, from 0 to 1."""
    text = text.strip()
    try:
        value = float(text[:-1]) / 100 if text.endswith("%") else float(text)
    except ValueError:
        raise ValueError(f"{flag} must look like 1% or 0.01, got {text!r}") from None
    if not 0 <= value <= 1:
        raise ValueError(f"{flag} must be between 0% and 100%, got {text!r}")
    return value


def flag_name(field_name: str) -> str:
    return field_name.replace("_", "-")


def env_name(field_name: str) -> str:
    return ENV_PREFIX + field_name.upper()


def config_fields(kind: type = ServerConfig) -> list[Any]:
    return list(fields(kind))
