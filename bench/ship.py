"""Ships a finished run of `bench/converged.sh` as a pretrained model of the package.

    python bench/ship.py runs/converged/sanp_kd_slimstart_0.5 resnet20_cifar10_sanp_kd_0.5

Reads the run's `model.keras` and `report/report.json` (what `examples/train_cifar.py`
wrote) and writes `sanp_keras/pretrained/<name>.weights.h5` and `<name>.json`
(`sk.models.save_pretrained`): the command that trained it, as the report recorded it,
and the error and cost measured on the test images by that run, plus the check that
`tests/models/test_pretrained.py` repeats on the embedded sample. For runs that did
not pass `--save_pretrained` (a run that does ships itself).
"""

import json
import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402

import sanp_keras as sk  # noqa: E402

METRICS = ("top1_error", "flops_ratio", "mean_macs", "dense_macs", "num_samples", "budget")


def ship(run_dir, name, backbone="resnet20", folder=None):
    """Writes the shipped files of `run_dir`'s model as `name` into `folder` (default:
    the package's `pretrained/`); returns the JSON."""
    model_path = os.path.join(run_dir, "model.keras")
    report_path = os.path.join(run_dir, "report", "report.json")
    for path in (model_path, report_path):
        if not os.path.exists(path):
            raise FileNotFoundError(f"{path} not found: is '{run_dir}' a finished run of "
                                    "bench/converged.sh?")
    with open(report_path) as f:
        result = json.load(f)
    metrics = {key: result[key] for key in METRICS}
    metrics["images"] = f"{result['dataset']}: the {result['num_samples']:,} test images"
    model = keras.models.load_model(model_path)
    return sk.models.save_pretrained(model, name, backbone, result["command"], metrics,
                                     folder)


def main(argv):
    if len(argv) != 3:
        sys.exit(f"usage: python {argv[0]} RUN_DIR NAME  (e.g. runs/converged/sanp_0.5 "
                 "resnet20_cifar10_sanp_0.5)")
    spec = ship(argv[1], argv[2])
    metrics = spec["metrics"]
    print(f"Shipped '{spec['name']}': top-1 error {metrics['top1_error']:.2%}, cost "
          f"{metrics['flops_ratio']:.3f} on {metrics['images']}; check cost "
          f"{spec['check']['flops_ratio']:.3f} on the embedded sample.")


if __name__ == "__main__":
    main(sys.argv)
