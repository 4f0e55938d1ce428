"""torchrest: serve PyTorch image classifiers over REST, fast, with adaptive batching."""

__version__ = "0.1.0"
