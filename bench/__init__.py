"""trilemma-bench: accuracy, adversarial robustness and generative quality under one training core."""

__version__ = "0.1.0"
