"""The converged ResNet-20 runs committed under `checkpoints/converged/<run>/` by
`bench/converged.sh` (a run is `<method>_<budget>`: `fixed_k_0.5`, `fbs_0.5`...), for
the benchmarks that time them (`--source=converged --method=fixed_k`)."""

import json
import os

import keras

import sanp_keras  # noqa: F401  (registers the layers the checkpoints hold)

FOLDER = os.path.normpath(
    os.path.join(os.path.dirname(__file__), "..", "checkpoints", "converged"))


def run_name(method, budget):
    """`run_name("fixed_k", 0.5) == "fixed_k_0.5"`, as `bench/converged.sh` names it."""
    return f"{method}_{float(budget):g}"


def run_folder(method, budget):
    folder = os.path.join(FOLDER, run_name(method, budget))
    if not os.path.exists(os.path.join(folder, "model.keras")):
        done = sorted(d for d in os.listdir(FOLDER)
                      if os.path.exists(os.path.join(FOLDER, d, "model.keras")))
        raise FileNotFoundError(
            f"No converged run {run_name(method, budget)!r} committed at {folder} (method="
            f"{method!r}, budget={budget!r}); committed: {done}. Train it with `bash "
            f"bench/converged.sh {run_name(method, budget)}`.")
    return folder


def report(method, budget):
    """The report.json of a committed converged run, as a dict (how it was trained, what
    it reached)."""
    with open(os.path.join(run_folder(method, budget), "report.json")) as f:
        return json.load(f)


def load(method, budget):
    """The Keras model of a committed converged run."""
    return keras.models.load_model(os.path.join(run_folder(method, budget), "model.keras"))
