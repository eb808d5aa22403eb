import keras
import numpy as np
import pytest

import sanp_keras as sk
from sanp_keras import flops


def test_registry_lists_the_paper_backbones():
    assert sk.models.list_models() == ["mcifarnet", "mobilenetv2", "resnet18", "resnet20",
                                       "resnet56", "vgg19"]


@pytest.mark.parametrize("name", sk.models.list_models())
def test_every_registered_model_builds_runs_and_counts(name):
    plain = sk.models.create_model(name, num_classes=7, gated=False)
    gated = sk.models.create_model(name, num_classes=7)
    x = np.random.RandomState(0).uniform(size=(2, 32, 32, 3)).astype("float32")
    assert gated.predict(x, verbose=0).shape == (2, 7)
    convs = [l for l in plain.layers if isinstance(l, keras.layers.Conv2D)]
    spms = [l for l in gated.layers if isinstance(l, sk.SPMConv2D)]
    classifier_convs = 1 if name == "mcifarnet" else 0
    assert len(spms) == len(convs) - classifier_convs  # every conv + BN is gated
    assert all("." in l.name for l in spms)  # hierarchical names
    report = flops.measure(gated, x)
    assert report["dense_macs"] == flops.dense_macs(plain)
    # a fresh gate keeps every channel: the cost is the dense one plus the gates' (1.4 %
    # for MobileNetV2's 35 small layers, under 1 % for the others)
    assert 0 < report["mean_macs"] - report["dense_macs"] < 0.015 * report["dense_macs"]


def test_unknown_model_and_bad_num_classes_are_refused():
    with pytest.raises(ValueError, match="name='resnet50'"):
        sk.models.create_model("resnet50")
    with pytest.raises(ValueError, match="num_classes=0"):
        sk.models.create_model("resnet20", num_classes=0)
