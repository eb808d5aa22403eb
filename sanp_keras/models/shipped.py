"""Trained weights shipped with the package: `pretrained(name)`, `list_pretrained()`.

Each shipped model is two plain files in `sanp_keras/pretrained/`:

- `<name>.weights.h5`: its Keras weights (gates' landing threshold included);
- `<name>.json`: how to build it (`architecture`: a zoo backbone, its gating mode and
  gate options), the command that trained it, what it measured (`metrics`: top-1
  error and mean cost on the test images it was evaluated on) and a `check`: its
  mean cost on the embedded sample's 1,000 test images and its logits on the first
  `CHECK_IMAGES` of them, which `tests/models/test_pretrained.py` repeats.

    >>> import sanp_keras as sk
    >>> sk.models.list_pretrained()
    >>> model = sk.models.pretrained("resnet20_cifar10_sanp_0.5")
    >>> sk.models.describe_pretrained("resnet20_cifar10_sanp_0.5")["metrics"]

The models expect images normalized as `sanp_keras.datasets.pipeline` does (per
channel, `datasets.CIFAR_MEAN` / `CIFAR_STD`) and return logits.
"""

import json
import os

import numpy as np

from sanp_keras import flops
from sanp_keras.convert import _GATE_OPTIONS
from sanp_keras.convert import convert
from sanp_keras.models.registry import create_model

PRETRAINED_DIR = os.path.join(os.path.dirname(os.path.dirname(__file__)), "pretrained")
CHECK_IMAGES = 16
_WEIGHTS = ".weights.h5"


def list_pretrained(folder=None):
    """Names of the shipped models (those with both their files), sorted."""
    folder = folder or PRETRAINED_DIR
    if not os.path.isdir(folder):
        return []
    return sorted(
        f[: -len(".json")] for f in os.listdir(folder)
        if f.endswith(".json") and os.path.exists(os.path.join(folder, f[:-5] + _WEIGHTS))
    )


def sanp_name(backbone, budget, dataset="cifar10"):
    """The name a SANP `backbone` pruned to `budget` is shipped under:
    `sanp_name("resnet20", 0.5) == "resnet20_cifar10_sanp_0.5"`."""
    return f"{backbone}_{dataset}_sanp_{float(budget):g}"


def describe_pretrained(name, folder=None):
    """The JSON beside the weights of `name`: architecture, command, metrics, check."""
    folder = folder or PRETRAINED_DIR
    if name not in list_pretrained(folder):
        raise ValueError(
            f"Unknown pretrained model. Expected one of {list_pretrained(folder)}. "
            f"Received: name={name!r}")
    with open(os.path.join(folder, name + ".json")) as f:
        return json.load(f)


def build(architecture):
    """An untrained model of `architecture` (the `"architecture"` entry of the JSON)."""
    model = create_model(architecture["backbone"], architecture["num_classes"], gated=False,
                         input_shape=tuple(architecture["input_shape"]))
    if architecture["mode"] == "plain":
        return model
    return convert(model, mode=architecture["mode"], on_unsupported="raise",
                   **architecture["gate_options"])


def pretrained(name, folder=None):
    """The shipped model `name` (see `list_pretrained()`), its weights loaded."""
    spec = describe_pretrained(name, folder)
    model = build(spec["architecture"])
    model.load_weights(os.path.join(folder or PRETRAINED_DIR, name + _WEIGHTS))
    return model


def architecture_of(model, backbone):
    """The `architecture` entry that rebuilds `model`, a zoo `backbone`, plain or gated
    by `convert` with one set of gate options (read back from its layers)."""
    gated = [g for g in flops.gated_layers(model)]
    architecture = {"backbone": backbone, "num_classes": int(model.output_shape[-1]),
                    "input_shape": list(model.input_shape[1:]), "mode": "plain",
                    "gate_options": {}}
    if gated:
        modes = {g.mode for g in gated}
        options = [{k: v for k, v in g.get_config().items()
                    if k in _GATE_OPTIONS and k != "seed"} for g in gated]
        if len(modes) != 1 or any(o != options[0] for o in options):
            raise ValueError(
                f"Model '{model.name}' mixes gate modes or options ({sorted(modes)}): "
                "it cannot be rebuilt from the zoo with one set of them.")
        architecture.update(mode=modes.pop(), gate_options=options[0])
    return architecture


def check_images():
    """The embedded sample's 1,000 test images, normalized: what `check` is measured on."""
    from sanp_keras import datasets

    return datasets.normalized(datasets.load("embedded").test)


def save_pretrained(model, name, backbone, command, metrics, folder=None):
    """Writes `<name>.weights.h5` and `<name>.json` (see the module) into `folder`.

    Args:
        model: the trained model, plain or gated, of zoo `backbone`.
        name: file stem, e.g. `"resnet20_cifar10_sanp_0.5"`.
        command: the command that trained it.
        metrics: what was measured on it (top-1 error, cost, on which images).

    Returns:
        The JSON written, as a dict.
    """
    folder = folder or PRETRAINED_DIR
    architecture = architecture_of(model, backbone)
    os.makedirs(folder, exist_ok=True)
    weights = os.path.join(folder, name + _WEIGHTS)
    plain = build(architecture)  # uncompiled: the file holds no optimizer state
    plain.set_weights(model.get_weights())
    plain.save_weights(weights)
    rebuilt = build(architecture)  # the check runs on what `pretrained` will return
    rebuilt.load_weights(weights)
    x = check_images()
    spec = {
        "name": name,
        "architecture": architecture,
        "command": command,
        "metrics": metrics,
        "check": {
            "images": f"sanp_keras embedded CIFAR-10 (JPEG) sample, {len(x)} test images",
            "flops_ratio": flops.measure(rebuilt, x)["flops_ratio"],
            "logits_first": np.asarray(rebuilt(x[:CHECK_IMAGES], training=False)).round(5)
            .tolist(),
        },
    }
    with open(os.path.join(folder, name + ".json"), "w") as f:
        json.dump(spec, f, indent=1)
    return spec
