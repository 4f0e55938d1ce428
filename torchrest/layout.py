"""A model's serving layout: how many instances, how many intra-op threads each, and the batch cap.

`torchrest optimize` measures the layouts that make sense for the machine's cores on the served path and
writes the best into the model folder's config.json; `serve` uses it, scaled to the thread budget it has
(--threads, or the cores the cgroup allows):

    instances  = the layout's instances, scaled by budget / the cores it was measured on (at least 1,
                 at most one per core)
    threads    = budget / instances
    batch cap  = the layout's, unless --tune-batch re-times it at start-up

Every model of a repository is laid out on the whole budget, and busy models overlap on the cores: one
model's instances leave gaps (decode, hand-offs, the serial parts of a network) that the other's fill
(benchmark/sharing.py; docs/optimize.md says what else was tried). Flags the operator sets (--instances,
--max-batch-size) win over config.json.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

DEFAULT_MAX_BATCH = 32  # the batch cap of a model without a tuned layout (then timed at start-up)
MAX_NARROW = 4  # a narrow model's instances without a layout: more would copy its weights for little gain


@dataclass(frozen=True, slots=True)
class Layout:
    instances: int
    threads: int  # intra-op threads of each instance
    max_batch_size: int = 0  # 0: not tuned (the server times batch sizes at start-up)

    @property
    def cores(self) -> int:
        return self.instances * self.threads

    def describe(self) -> str:
        cap = f", batches of up to {self.max_batch_size}" if self.max_batch_size else ""
        return f"{self.instances} x {self.threads} threads{cap}"

    def to_dict(self) -> dict[str, int]:
        return asdict(self)

    @classmethod
    def from_dict(cls, raw: Any) -> Layout:
        """Raises ValueError for anything but {"instances": n, "threads": n[, "max_batch_size": n]}, n > 0."""
        if not isinstance(raw, dict):
            raise ValueError("layout must be an object with instances, threads and max_batch_size")
        try:
            layout = cls(int(raw["instances"]), int(raw["threads"]), int(raw.get("max_batch_size", 0)))
        except (KeyError, TypeError, ValueError):
            raise ValueError(f"layout needs positive integer instances and threads, got {raw!r}") from None
        if layout.instances <= 0 or layout.threads <= 0 or layout.max_batch_size < 0:
            raise ValueError(f"layout needs positive integer instances and threads, got {raw!r}")
        return layout


def splits(cores: int) -> list[tuple[int, int]]:
    """The ways to split `cores` into instances x threads that use every core, fewest instances first:
    4 cores -> 1x4, 2x2, 4x1."""
    found = {(instances, cores // instances) for instances in range(1, cores + 1) if cores % instances == 0}
    return sorted(found)


def serving_layout(
    tuned: Layout | None,
    cores: int,
    *,
    instances: int = 0,
    max_batch_size: int = 0,
    tune_batch: bool | None = None,
    narrow: bool = False,
) -> tuple[Layout, bool]:
    """The layout a model is served with on `cores`, and whether its batch cap is to be timed at start-up.

    `tuned` is config.json's (None for a model optimize never saw); `instances` and `max_batch_size`, when
    non-zero, are the operator's flags; `tune_batch` is --[no-]tune-batch (None: time the cap only when
    neither config.json nor the flags give one); `narrow`: without either, one instance per core (up to
    MAX_NARROW, and a divisor of `cores` so that every instance gets as many threads), else one instance with
    every core."""
    cores = max(1, cores)
    if instances <= 0 and tuned is not None:
        instances = max(1, min(cores, round(tuned.instances * cores / tuned.cores)))
    elif instances <= 0:
        instances = max(n for n in range(1, min(cores, MAX_NARROW) + 1) if cores % n == 0) if narrow else 1
    given = max_batch_size or (tuned.max_batch_size if tuned is not None else 0)
    timed = not given if tune_batch is None else tune_batch
    return Layout(instances, max(1, cores // instances), given or DEFAULT_MAX_BATCH), timed
