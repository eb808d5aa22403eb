"""The package as `pip install .` makes it: a platform wheel carrying the kernel library,
whose `kernels` export and runner work with no source tree beside them."""

import glob
import json
import os
import shutil
import subprocess
import sys
import zipfile

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# Run from an empty folder with only the installed package on the path.
_CHECK = r"""
import json, os
import numpy as np, keras
import sanp_keras as sk
from sanp_keras import export, flops

inputs = keras.Input((8, 8, 3))
x = sk.SPMConv2D(16, 3, padding="same", activation="relu", reduction=2)(inputs)
x = sk.SPMConv2D(16, 3, padding="same", activation="relu", reduction=2)(x)
model = keras.Model(inputs, keras.layers.Dense(3)(keras.layers.GlobalAveragePooling2D()(x)))
rng = np.random.RandomState(0)
for layer in flops.gated_layers(model):  # about half open, varying per sample
    layer.gate.excite_kernel.assign(rng.normal(0, 1.0, layer.gate.excite_kernel.shape))
    layer.gate.excite_bias.assign(rng.normal(0, 0.5, layer.gate.excite_bias.shape))
images = rng.normal(size=(6, 8, 8, 3)).astype("float32")
library = export.build_kernels()
path = export.export_tflite(model, "m.tflite", "kernels", decisions=True)
results = {}
for isa, supported in export.kernel_isas().items():
    if supported:
        export.set_kernel_isa(isa)
        results[isa] = export.parity.check_file(model, path, "kernels", images)
print(json.dumps({"package": os.path.dirname(sk.__file__), "library": library,
                  "results": results}))
"""


@pytest.fixture(scope="module")
def installed(tmp_path_factory):
    if shutil.which(os.environ.get("CC", "cc")) is None or shutil.which("make") is None:
        pytest.skip("no C compiler or make: the wheel would carry no kernels")
    setuptools = pytest.importorskip(
        "setuptools", reason="the wheel is built without build isolation (no network in "
                             "the tests): it needs setuptools")
    if tuple(int(v) for v in setuptools.__version__.split(".")[:2]) < (70, 1):
        pytest.importorskip("wheel", reason="setuptools < 70.1 builds wheels with `wheel`")
    wheels = tmp_path_factory.mktemp("wheels")
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation",
                    "-q", ROOT, "-w", str(wheels)], check=True, capture_output=True)
    (wheel,) = glob.glob(str(wheels / "sanp_keras-*.whl"))
    site = tmp_path_factory.mktemp("site")
    with zipfile.ZipFile(wheel) as archive:  # what pip install puts in site-packages
        archive.extractall(site)
    return wheel, site


def test_the_wheel_is_platform_specific_and_carries_the_kernels(installed):
    wheel, site = installed
    assert not wheel.endswith("-none-any.whl"), wheel
    assert os.path.exists(site / "sanp_keras" / "_kernels" / "libsanp_tflite.so")
    assert not (site / "tflite").exists()


def test_kernels_export_and_run_from_the_installed_package(installed, tmp_path):
    _, site = installed
    env = {**os.environ, "PYTHONPATH": str(site)}
    env.pop("SANP_TFLITE_LIB", None)
    done = subprocess.run([sys.executable, "-c", _CHECK], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    out = json.loads(done.stdout.strip().splitlines()[-1])
    assert out["package"] == str(site / "sanp_keras")
    assert out["library"] == str(site / "sanp_keras" / "_kernels" / "libsanp_tflite.so")
    assert "generic" in out["results"]
    for isa, result in out["results"].items():
        assert result["decisions_equal"] == 1.0 and result["top1_equal"] == 1.0, isa
        assert result["max_logit_diff"] < 1e-3, isa
        assert 0.1 < result["open_share"] < 0.9, isa
