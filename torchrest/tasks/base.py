"""What every task shares: an image's geometry (where its pixels went in the model's input, so that answers
come back in the original image's pixels), a model's answer for one image, the Open Inference Protocol's
output tensor, and the reading of a request's options.

    decode: the image -> Geometry (resize.fit_into)      engine: outputs -> Head.decode -> Answer per image
    front-end: Answer + Geometry -> the task's JSON, v2 tensors or PNG, in the original image's pixels
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple, Protocol

import numpy as np
import orjson

from torchrest.errors import BadRequest, TorchrestError

OutputShape = tuple[int, ...]  # one output's shape for one image (the batch dimension dropped); -1: any


@dataclass(frozen=True, slots=True)
class Geometry:
    """Where an image went in the model's input: its size (EXIF orientation applied), the input pixels per
    original pixel along each axis, and where the original's top-left corner landed in the input (negative
    where a crop cut it, positive where letterbox padding pushed it)."""

    width: int
    height: int
    scale_x: float = 1.0
    scale_y: float = 1.0
    left: float = 0.0
    top: float = 0.0

    @classmethod
    def identity(cls, width: int, height: int) -> Geometry:
        """An input that was sent already fitted (v2 pixels or tensors): its pixels are the original's."""
        return cls(width, height)

    def boxes_to_original(self, boxes: np.ndarray) -> np.ndarray:
        """(K, 4) x1, y1, x2, y2 in input pixels -> the same in original pixels, clipped to the image."""
        out = np.empty_like(boxes, dtype=np.float32)
        out[:, 0::2] = (boxes[:, 0::2] - self.left) / self.scale_x
        out[:, 1::2] = (boxes[:, 1::2] - self.top) / self.scale_y
        np.clip(out[:, 0::2], 0, self.width, out=out[:, 0::2])
        np.clip(out[:, 1::2], 0, self.height, out=out[:, 1::2])
        return out

    def source_rows(self, input_height: int, rows: int) -> np.ndarray:
        """For each original row, the row of a map `rows` high covering the `input_height` input (nearest,
        sampled at the original pixel's centre)."""
        return _nearest(self.height, self.scale_y, self.top, rows / input_height, rows)

    def source_columns(self, input_width: int, columns: int) -> np.ndarray:
        return _nearest(self.width, self.scale_x, self.left, columns / input_width, columns)


def _nearest(count: int, scale: float, offset: float, per_input: float, limit: int) -> np.ndarray:
    centres = (np.arange(count, dtype=np.float64) + 0.5) * scale + offset
    return np.clip(np.floor(centres * per_input), 0, limit - 1).astype(np.intp)


class Answer(NamedTuple):
    """One image's answer from the model, in the model input's pixels: the task's array (classify: the
    class probabilities; embed: the vector; detect: (K, 6) rows of x1, y1, x2, y2, score, class; segment:
    the class of each pixel of the model's output), the most probable class (classify; else -1), and the
    image's geometry, which maps it back to the original."""

    value: np.ndarray
    best: int = -1
    geometry: Geometry | None = None


Decoded = tuple[np.ndarray, int] | TorchrestError  # one image's (value, best), or the error it earned
Rows = slice | np.ndarray  # which rows of a batch's outputs a head decodes


class Head(Protocol):
    """A task bound to a model's outputs (engine side): a batch's outputs -> each image's answer."""

    task: str

    def decode(self, outputs: Sequence[np.ndarray], rows: Rows, options: Sequence[Any]) -> list[Decoded]:
        """The answers of the batch's `rows` (each with its request's options), in order."""
        ...

    def describe(self) -> dict[str, object]:
        """What the model outputs for this task (GET /, the v2 metadata's parameters)."""
        ...


@dataclass(slots=True)
class Output:
    """One output tensor of an Open Inference Protocol answer."""

    name: str
    datatype: str  # FP32, INT32, UINT8 or BYTES
    shape: list[int]
    data: np.ndarray | list[bytes]
    binary: bool


def number(
    parameters: Mapping[str, object], name: str, default: float, low: float, high: float, integer: bool = False
) -> float:
    """A request option, from a query string (text) or the protocol's parameters (numbers): 400 unless it is
    a number from `low` to `high` (a whole one where `integer`)."""
    raw = parameters.get(name)
    if raw is None:
        return default
    kind = "an integer" if integer else "a number"
    value: float | None = None
    if isinstance(raw, (int, float)) and not isinstance(raw, bool):
        value = float(raw)
    elif isinstance(raw, str):
        try:
            value = float(raw.strip())
        except ValueError:
            value = None
    if value is None or not np.isfinite(value) or not low <= value <= high or (integer and value != int(value)):
        raise BadRequest(f"{name} must be {kind} from {low:g} to {high:g}, got {raw!r}")
    return int(value) if integer else value


def flag(parameters: Mapping[str, object], name: str, default: bool = False) -> bool:
    """A yes/no option: a boolean, the numbers 1 and 0, or the text true/false, 1/0, yes/no (any case)."""
    raw = parameters.get(name)
    if raw is None:
        return default
    if isinstance(raw, bool):
        return raw
    if isinstance(raw, int) and raw in (0, 1):
        return bool(raw)
    if isinstance(raw, str) and raw.strip().lower() in ("true", "1", "yes"):
        return True
    if isinstance(raw, str) and raw.strip().lower() in ("false", "0", "no"):
        return False
    raise BadRequest(f"{name} must be true or false, got {raw!r}")


def json_answer(payload: dict[str, Any]) -> tuple[bytes, str]:
    """An answer as compact UTF-8 JSON, arrays of numbers written from numpy directly (orjson: a 1,280-float
    embedding in a fortieth of the time json takes)."""
    return orjson.dumps(payload, option=orjson.OPT_SERIALIZE_NUMPY), "application/json"


def shown(shape: OutputShape | None) -> str:
    """One output's shape for an error message, its batch dimension first: (N, 84, 8400); or 'missing'."""
    if shape is None:
        return "missing"
    return "(N" + "".join(f", {'?' if side < 0 else side}" for side in shape) + ")"


def label(labels: list[str], class_id: int) -> str:
    """A class's name, or class_<id> past the names the model has."""
    return labels[class_id] if 0 <= class_id < len(labels) else f"class_{class_id}"


Schema = dict[str, Any]  # an OpenAPI (JSON Schema) object
# the original image's size, as the answers that map back onto it give it
IMAGE_SIZE: Schema = {
    "type": "object",
    "required": ["width", "height"],
    "properties": {"width": {"type": "integer"}, "height": {"type": "integer"}},
}
VIEWS = ("json", "labels", "boxes", "mask", "pair")  # how the web page shows an answer (api/static/app.js)


class Task:
    """What a model is for, whole: subclass it, then name it to the server (`--task package.module:Class`, a
    folder's config.json `"task"`, or an entry point in the group `torchrest.tasks`). docs/tasks.md walks
    through one. The engine calls `bind` once per model and the head's `decode` once per batch; a
    front-end calls the options, the answer and the protocol methods once per request.

    Declared: its name (its route is POST /<name>), how images are fitted to the model's input and
    normalised unless the model says otherwise, its Open Inference Protocol outputs, how the page shows
    it, its OpenAPI description and its fidelity gate (default: the closeness of its outputs to fp32's)."""

    name: str = ""
    summary: str = ""  # one line: OpenAPI's summary of its route, the page's help
    resize: str = "letterbox"  # crop, letterbox or stretch (torchrest.resize)
    normalize: str = "imagenet"  # imagenet (mean and std) or unit (pixels / 255)
    outputs: tuple[str, ...] = ()  # the Open Inference Protocol outputs it can give
    default_outputs: tuple[str, ...] = ()  # those given when a request names none (empty: all of them)
    view: str = "json"  # how the web page shows the answer (VIEWS); json: the answer as text
    page_query: Mapping[str, str] = {}  # what the page adds to its requests' query string
    answers_png: bool = False  # whether `Accept: image/png` gets a PNG (OpenAPI)
    imagenet_labels: bool = False  # a model file served without --labels names its classes as ImageNet's
    labels_required: bool = False  # a repository's model folder must hold its labels.txt

    @property
    def route(self) -> str:
        return f"/{self.name}"

    @property
    def fidelity(self) -> Any:
        """How `torchrest optimize` judges this task's answers (torchrest.tasks.fidelity)."""
        from torchrest.tasks.fidelity import Closeness

        return Closeness(self.name)

    def fit_refused(self, resize: str) -> str:
        """Why this task cannot take images fitted so (one line), or "" when it can."""
        return ""

    # -- the engine side -----------------------------------------------------------------------------------
    def bind(self, outputs: Sequence[OutputShape], first: int, input_size: tuple[int, int]) -> tuple[Any, int]:
        """The head that reads the model's outputs from `first` on (each output's shape for one image), and
        how many outputs it reads. Raise ModelLoadError (one line: what was expected, what was found) when
        they do not fit."""
        raise NotImplementedError

    # -- the front-end side ------------------------------------------------------------------------------
    def options(self, parameters: Mapping[str, object]) -> Any:
        """A request's options, from its query string (text) or the protocol's parameters (typed): raise
        BadRequest (400, naming the option) when one is not valid. `number` and `flag` read the usual ones."""
        return None

    def http_options(self, query: Mapping[str, str]) -> Any:
        return self.options(query)

    def v2_options(self, parameters: Mapping[str, object], head: Any) -> Any:
        return self.options(parameters)

    def encodes_off_loop(self, answer: Answer) -> bool:
        """Whether writing this answer is long enough to leave the event loop for (a large image's PNG)."""
        return False

    def http_body(
        self, answer: Answer, options: Any, head: Any, labels: list[str], model: str, accept: str
    ) -> tuple[bytes, str]:
        """The HTTP answer, its body and content type: JSON (`json_answer`), or bytes such as a PNG."""
        raise NotImplementedError

    def v2_metadata(self, head: Any) -> list[dict[str, Any]]:
        """Its outputs' names, datatypes and shapes (-1: any) for the model's metadata."""
        return []

    def v2_outputs(
        self, answers: list[Answer], options: Any, head: Any, labels: list[str], wanted: Mapping[str, bool]
    ) -> list[Output]:
        """The output tensors of a request's images, those `wanted` (name -> whether as binary data)."""
        raise NotImplementedError

    def openapi(self) -> tuple[list[Schema], Schema]:
        """Its route's query parameters and the schema of its JSON answer (default: none, and an object)."""
        return [], {"type": "object"}

    def page(self) -> dict[str, object]:
        """What the web page needs to offer this task: its route, view, query and help."""
        return {"route": self.route, "view": self.view, "query": dict(self.page_query), "help": self.summary}
