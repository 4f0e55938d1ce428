"""Find the fastest faithful backend for a model on this machine: `torchrest optimize`."""

from torchrest.optimize.run import Outcome, optimize

__all__ = ["Outcome", "optimize"]
