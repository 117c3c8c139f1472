"""runner: a declarative, test-first experiment runner for mixed-precision training with Keras."""

__version__ = "0.1.0"
