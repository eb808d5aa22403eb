"""Shipped weights: every listed model against the JSON beside it, and the round trip."""

import json

import numpy as np
import pytest

import sanp_keras as sk
from sanp_keras import flops
from sanp_keras.models import shipped

REQUIRED = ("resnet20_cifar10", "resnet20_cifar10_sanp_0.5", "resnet20_cifar10_sanp_0.33")


@pytest.fixture(scope="module")
def images():
    return shipped.check_images()


@pytest.mark.parametrize("name", sk.models.list_pretrained())
def test_each_shipped_model_matches_its_json(name, images):
    spec = sk.models.describe_pretrained(name)
    for key in ("architecture", "command", "metrics", "check"):
        assert key in spec
    model = sk.models.pretrained(name)
    check = spec["check"]
    assert abs(flops.measure(model, images)["flops_ratio"] - check["flops_ratio"]) < 1e-6
    logits = np.asarray(model(images[: shipped.CHECK_IMAGES], training=False))
    np.testing.assert_allclose(logits, check["logits_first"], atol=1e-4)


def test_round_trip_of_a_gated_model_and_errors(tmp_path, images):
    plain = sk.models.create_model("resnet20", gated=False)
    gated = sk.convert(plain, mode="sanp", gate_rescale="none", noise_stddev=0.5)
    rng = np.random.default_rng(0)
    for layer in flops.gated_layers(gated):  # gates that prune, differently per sample
        layer.gate.excite_kernel.assign(rng.normal(0, 0.5, layer.gate.excite_kernel.shape))
        layer.gate.excite_bias.assign(rng.normal(0.3, 1.0, layer.gate.excite_bias.shape))
    metrics = {"top1_error": 0.9, "images": "none"}
    spec = shipped.save_pretrained(gated, "tiny", "resnet20", "test", metrics,
                                          folder=str(tmp_path))
    assert sk.models.list_pretrained(str(tmp_path)) == ["tiny"]
    saved = json.loads((tmp_path / "tiny.json").read_text())
    assert saved == json.loads(json.dumps(spec))
    assert saved["architecture"]["mode"] == "sanp"
    assert saved["architecture"]["gate_options"]["gate_rescale"] == "none"
    assert saved["architecture"]["gate_options"]["noise_stddev"] == 0.5
    loaded = sk.models.pretrained("tiny", folder=str(tmp_path))
    x = images[:8]
    np.testing.assert_allclose(np.asarray(loaded(x)), np.asarray(gated(x)), atol=1e-5)
    measured = flops.measure(gated, images)["flops_ratio"]
    assert 0.05 < measured < 0.95 and abs(saved["check"]["flops_ratio"] - measured) < 1e-9
    with pytest.raises(ValueError, match="name='nope'"):
        sk.models.pretrained("nope", folder=str(tmp_path))


def test_the_required_models_are_shipped():
    assert set(REQUIRED) <= set(sk.models.list_pretrained())
    assert [shipped.sanp_name("resnet20", b) for b in (0.5, "0.33")] == list(REQUIRED[1:])
