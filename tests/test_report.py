import json

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from sanp_keras import report
from tests.test_flops import _branchy_gated_model
from tests.test_flops import _images


def _result():
    model = _branchy_gated_model()
    x = _images(24, 0)
    y = np.random.RandomState(0).randint(0, 3, 24)
    ds = tf.data.Dataset.from_tensor_slices((x, y)).batch(8)
    return report.evaluate(model, ds, name="branchy"), model, x, y


def test_evaluate_reports_error_and_cost():
    result, model, x, y = _result()
    expected_error = np.mean(np.argmax(model.predict(x, verbose=0), axis=1) != y)
    assert result["top1_error"] == pytest.approx(expected_error)
    assert result["num_samples"] == 24
    assert {"dense_macs", "mean_macs", "percentiles", "pruned_fraction", "per_layer"} <= set(result)


def test_write_report_files_and_figures(tmp_path):
    result, *_ = _result()
    paths = report.write_report(result, str(tmp_path), command="python make.py")
    assert set(paths) == {"json", "markdown", "active_ratios", "figure4_categories",
                          "figure4_distribution"}
    saved = json.loads(open(paths["json"]).read())
    assert saved["command"] == "python make.py" and saved["top1_error"] == result["top1_error"]
    text = open(paths["markdown"]).read()
    assert "python make.py" in text and "| b |" in text and "pruned" in text
    for key in ("active_ratios", "figure4_categories", "figure4_distribution"):
        with Image.open(paths[key]) as image:
            assert image.size[0] > 300 and image.size[1] > 200


def test_cli_compare_plots_accuracy_against_cost(tmp_path):
    result, *_ = _result()
    files = []
    for i, error in enumerate((0.1, 0.2)):
        path = tmp_path / f"r{i}.json"
        path.write_text(json.dumps(dict(result, name=f"run{i}", top1_error=error)))
        files.append(str(path))
    report.main(["--compare", *files, "--output_dir", str(tmp_path / "cmp")])
    assert (tmp_path / "cmp" / "accuracy_vs_cost.png").exists()
