"""Model names, versions and states: what a name from a URL may be before it reaches the filesystem, and
the states the repository index reports (Triton's words). Both the front-ends and the engine use them."""

from __future__ import annotations

import re
from enum import StrEnum

from torchrest.errors import BadRequest

MODEL_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}")
VERSION = re.compile(r"[0-9]{1,18}")


class ModelState(StrEnum):
    """A model's state, as the repository index reports it (Triton's words)."""

    READY = "READY"
    LOADING = "LOADING"
    UNLOADING = "UNLOADING"
    UNAVAILABLE = "UNAVAILABLE"


READY, LOADING, UNLOADING, UNAVAILABLE = ModelState


def check_model_name(name: str) -> None:
    """Names from URLs never reach the filesystem unchecked: letters, digits, '_', '-' and '.', not
    starting with '.' or '-', at most 128 characters (so no '..', no slash, encoded or not, no NUL)."""
    if not MODEL_NAME.fullmatch(name):
        raise BadRequest(
            f"invalid model name {shown(name)}: use letters, digits, '_', '-' and '.', not starting "
            "with '.' or '-', at most 128 characters"
        )


def shown(text: str) -> str:
    return repr(text if len(text) <= 40 else text[:40] + "...")
