"""The main job, `examples/train_cifar.py`, on a tiny slice of the embedded sample."""

import functools
import importlib.util
import json
import os

import pytest

EXAMPLE = os.path.join(os.path.dirname(__file__), "..", "examples", "train_cifar.py")


@functools.lru_cache(maxsize=None)  # once per process: it defines absl flags
def _example():
    spec = importlib.util.spec_from_file_location("train_cifar", EXAMPLE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_default_path_on_a_tiny_slice_meets_the_budget(tmp_path):
    result = _example().run(
        train_subset=512, test_subset=256, batch_size=32, backbone_epochs=2,
        warmup_epochs=1, finetune_epochs=10, finetune_lr=0.02, gate_speed=0.05,
        budget=0.5, output_dir=str(tmp_path),
        verbose=0, command="test",
    )
    saved = json.loads((tmp_path / "report" / "report.json").read_text())
    for key in ("top1_error", "mean_macs", "dense_macs", "percentiles", "pruned_fraction",
                "flops_ratio", "per_layer", "budget", "dataset", "command"):
        assert key in saved
    assert saved["dense_macs"] == 40_551_040 and saved["num_samples"] == 256
    assert 0.0 <= saved["top1_error"] < 0.9
    # 160 steps from a weak backbone: where the controller stands when they end varies
    # between runs (0.46 and 0.59 seen); one global gate threshold then brings a cost
    # over the budget down to it, measured on the training images, checked here on
    # the test images.
    assert saved["landing"]["flops_ratio_after"] <= 0.5
    assert 0.4 < result["flops_ratio"] < 0.53
    for name in ("report.md", "figure4_categories.png", "figure4_distribution.png"):
        assert (tmp_path / "report" / name).exists()
    assert (tmp_path / "model.keras").exists()
    assert (tmp_path / "3_finetune" / "log.csv").read_text().startswith("epoch,")
    # Exported (portable, the default) and checked against Keras on 200 test images.
    exported = saved["export"]
    assert exported["kind"] == "portable" and os.path.exists(exported["path"])
    assert exported["check_images"] == 200
    assert exported["decisions_equal"] >= 0.999 and exported["top1_equal"] >= 0.99
    assert exported["max_logit_diff"] < 1e-3 * max(1.0, exported["max_abs_logit"])


@pytest.fixture(scope="module")
def backbone(tmp_path_factory):
    import keras

    import sanp_keras as sk

    path = str(tmp_path_factory.mktemp("backbone") / "resnet20.keras")
    # Module-scoped, so built before the per-test seed: seeded here, the same backbone
    # whichever tests run first (an unseeded one made the FBS run diverge at times).
    keras.utils.set_random_seed(7)
    sk.models.create_model("resnet20", gated=False).save(path)
    return path


@pytest.mark.parametrize("mode", ["fixed_k", "static", "fbs", "slimming", "thin"])
def test_other_modes_train_from_the_backbone_and_report(mode, backbone, tmp_path):
    # sanp: the test above; every mode through bench/compare.py: tests/test_compare.py
    # (large). FIXED-K (keep ratio calibrated after warm-up), Network Slimming and thin
    # dense meet the budget by construction, FBS does not exceed it, STATIC through the
    # controller and the landing.
    # FBS from this random backbone (logits up to about 70), distilled as by default,
    # diverges in its first warm-up step unless clipped, as --clipnorm's help advises.
    result = _example().run(
        mode=mode, pretrained=backbone, train_subset=64, test_subset=32, batch_size=32,
        backbone_epochs=1, warmup_epochs=1, finetune_epochs=1, budget=0.5,
        clipnorm=1.0 if mode == "fbs" else None,
        output_dir=str(tmp_path), verbose=0, command="test",
    )
    saved = json.loads((tmp_path / "report" / "report.json").read_text())
    for key in ("top1_error", "mean_macs", "percentiles", "pruned_fraction", "flops_ratio",
                "budget", "mode"):
        assert key in saved
    assert saved["dense_macs"] == 40_551_040 and saved["mode"] == mode
    assert saved["export"]["top1_equal"] >= 0.99  # gated or plain, it exports
    if mode in ("fixed_k", "slimming", "thin"):
        assert abs(result["flops_ratio"] - 0.5) < 0.03
    if mode in ("static", "fbs"):  # at most the budget (FBS: at most k per layer)
        assert result["flops_ratio"] < 0.53
    if mode in ("slimming", "thin"):  # plain, physically smaller models
        import keras

        import sanp_keras as sk

        model = keras.models.load_model(tmp_path / "model.keras")
        assert not sk.flops.gated_layers(model)
        assert sk.flops.dense_macs(model) == result["mean_macs"]


def test_slimming_start_prunes_the_inner_convs_unevenly_and_leaves_the_stream(tmp_path):
    import keras

    import sanp_keras as sk
    from sanp_keras import slimming
    from tests import oracle

    plain = oracle.randomize_batch_norm(sk.models.create_model("resnet20", gated=False), 3)
    path = str(tmp_path / "backbone.keras")
    plain.save(path)
    result = _example().run(
        mode="sanp", gate_start="slimming", pretrained=path, train_subset=64,
        test_subset=32, batch_size=32, warmup_epochs=1, finetune_epochs=1,
        finetune_lr=1e-4, budget=0.5, output_dir=str(tmp_path / "run"), verbose=0,
        command="test",
    )
    assert result["flops_ratio"] <= 0.52
    # The inner convs keep about Network Slimming's fractions; the stream and the stem
    # stay open (a fine-tune of one epoch at lr 1e-4 moves little).
    allocation = slimming.allocation(plain, 0.5)
    model = keras.models.load_model(tmp_path / "run" / "model.keras")
    measured = sk.flops.measure(model, oracle.images(32, 0, size=32))["per_layer"]
    for layer in sk.flops.gated_layers(model):
        ratio = measured[layer.name]["active_ratio"]
        expected = allocation.get(layer.name, 1.0)
        assert abs(ratio - expected) <= 2.5 / layer.filters, (layer.name, ratio, expected)
    assert len(set(allocation.values())) > 3  # one fraction per layer, not one k for all


def test_slimming_start_falls_back_to_the_even_start_out_of_slimming_reach(capsys):
    import sanp_keras as sk
    from sanp_keras import slimming
    from tests import oracle

    example = _example()
    plain = oracle.randomize_batch_norm(sk.models.create_model("resnet20", gated=False), 3)
    gated = sk.convert(plain)
    ratios, landed, how = example.start_allocation(gated, plain, "slimming", 0.5)
    assert ratios == slimming.allocation(plain, 0.5) and landed == list(ratios)
    assert "Network Slimming's allocation" in how
    # one channel in every inner conv still costs about 0.05 of dense: no Slimming start
    ratio, landed, how = example.start_allocation(gated, plain, "slimming", 0.03)
    assert "No Network Slimming start" in capsys.readouterr().out
    assert ratio == sk.training.fixed_k_keep_ratio(gated, 0.03) and landed is None
    assert example.start_allocation(gated, plain, "budget", 0.5)[:2] == (
        sk.training.fixed_k_keep_ratio(gated, 0.5), None)


def test_bad_mode_and_missing_data_fail_clearly(tmp_path):
    example = _example()
    from sanp_keras import datasets

    with pytest.raises(datasets.DataNotFoundError, match="cifar-100-python.tar.gz"):
        example.run(dataset="cifar100", data_dir=str(tmp_path), output_dir=str(tmp_path))


def test_clipnorm_bounds_every_step():
    import keras
    import numpy as np

    x = np.full((8, 4), 1e3, np.float32)  # huge inputs: huge gradients
    y = np.arange(8) % 10
    steps = {}
    for clipnorm in (None, 1.0):
        keras.utils.set_random_seed(0)
        model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(10)])
        _example()._compile(0.1, 1, 1, cosine=False, clipnorm=clipnorm)(model)
        before = [w.copy() for w in model.get_weights()]
        model.train_on_batch(x, y)
        steps[clipnorm] = np.sqrt(sum(np.sum((w - b) ** 2)
                                      for w, b in zip(model.get_weights(), before)))
    # the first Nesterov step (momentum 0.9) moves the weights by (1 + 0.9) * lr * |gradient|
    # (+ a decoupled weight decay of lr * 5e-4 * w)
    assert 0.1 * 1.0 < steps[1.0] <= 1.9 * 0.1 * 1.0 + 1e-3 < 100 * 0.1 < steps[None]


def test_backbone_source_resolves_shipped_names_and_refuses_others():
    import sanp_keras as sk
    from sanp_keras import datasets

    example = _example()
    cifar = datasets.load("embedded").subset(16, 16)
    assert example.backbone_source("none", "resnet20", cifar) is None
    assert example.backbone_source(None, "resnet20", cifar) is None
    assert example.backbone_source("b.keras", "resnet20", cifar) == "b.keras"
    shipped = "resnet20_cifar10" in sk.models.list_pretrained()
    assert example.backbone_source("shipped", "resnet20", cifar) == (
        "resnet20_cifar10" if shipped else None)
    assert example.backbone_source("shipped", "vgg19", cifar) is None  # none shipped
    with pytest.raises(ValueError, match="pretrained='resnet_99'"):
        example.backbone_source("resnet_99", "resnet20", cifar)
