"""`examples/train_cifar.py` as a module, for the benchmarks that run its recipe.

Importing it defines the example's absl flags, which those scripts reuse.
"""

import importlib.util
import os

EXAMPLE = os.path.join(os.path.dirname(__file__), "..", "examples", "train_cifar.py")


def load():
    spec = importlib.util.spec_from_file_location("train_cifar", EXAMPLE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
