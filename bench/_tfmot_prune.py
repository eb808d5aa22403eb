"""Magnitude pruning with tensorflow-model-optimization, in its own process.

    python bench/_tfmot_prune.py --dense_model=runs/protocol/dense/model.keras \
        --dataset=../shared/data/cifar10 --budget=0.5 --epochs=3 --train_subset=10000 \
        --output_dir=runs/compare/resnet20/tfmot_0.5

tfmot works only with tf_keras (Keras 2) and sets `TF_USE_LEGACY_KERAS=1` for the
process, so `bench/compare.py` runs this script as a subprocess and the package never
imports tfmot. The Keras 3 dense model is rebuilt layer by layer in tf_keras (same
names, same weights), every Conv2D and Dense is wrapped by `prune_low_magnitude` with a
polynomial schedule to `1 - budget` sparsity (Zhu & Gupta 2017), fine-tuned, stripped
and converted twice: a plain `.tflite` and one with the sparse weights encoded
(`Optimize.EXPERIMENTAL_SPARSITY`).

Writes `<output_dir>/result.json`: top-1 error, `dense_macs`, `mean_macs` = the MACs of
the non-zero weights (what an ideal sparse kernel would do), the weight sparsity, and
the two `.tflite` paths. Unstructured zeros do not shrink any dense operation: what the
runtime really does with them is what `compare.py` times.
"""

import json
import os
import sys

os.environ["TF_USE_LEGACY_KERAS"] = "1"
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402  (Keras 3: reads the dense model)
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402
import tensorflow_model_optimization as tfmot  # noqa: E402
from absl import app  # noqa: E402
from absl import flags  # noqa: E402

import sanp_keras as sk  # noqa: E402
from sanp_keras import datasets  # noqa: E402
from sanp_keras import graph  # noqa: E402

tfk = tf.keras  # tf_keras, because of TF_USE_LEGACY_KERAS

DENSE_MODEL = flags.DEFINE_string("dense_model", None, "The trained plain model (.keras).")
DATASET = flags.DEFINE_string("dataset", "embedded", "As in examples/train_cifar.py.")
DATA_DIR = flags.DEFINE_string("data_dir", None, "As in examples/train_cifar.py.")
BUDGET = flags.DEFINE_float("budget", 0.5, "Fraction of weights kept (1 - sparsity).")
EPOCHS = flags.DEFINE_integer("epochs", 3, "Fine-tuning epochs with pruning.")
LR = flags.DEFINE_float("lr", 0.01, "Peak learning rate (SGD, cosine).")
BATCH = flags.DEFINE_integer("batch_size", 128, "Batch size.")
TRAIN_SUBSET = flags.DEFINE_integer("train_subset", None, "Training images drawn at random.")
TEST_SUBSET = flags.DEFINE_integer("test_subset", None, "Test images drawn at random.")
OUTPUT_DIR = flags.DEFINE_string("output_dir", None, "Where the result and models go.")
SEED = flags.DEFINE_integer("seed", 0, "Random seed.")


def _zero_pad_shortcut(layer, c_in):
    before, after = layer.pad_widths(c_in)
    s = layer.stride
    return tfk.layers.Lambda(
        lambda t: tf.pad(t[:, ::s, ::s, :], [[0, 0], [0, 0], [0, 0], [before, after]]),
        name=layer.name)


def to_tf_keras(model):
    """The plain Keras 3 model rebuilt in tf_keras, same layer names and weights."""
    simple = {
        keras.layers.ReLU: lambda c: tfk.layers.ReLU(name=c["name"]),
        keras.layers.Add: lambda c: tfk.layers.Add(name=c["name"]),
        keras.layers.Flatten: lambda c: tfk.layers.Flatten(name=c["name"]),
        keras.layers.Dropout: lambda c: tfk.layers.Dropout(c["rate"], name=c["name"]),
        keras.layers.GlobalAveragePooling2D: lambda c: tfk.layers.GlobalAveragePooling2D(
            keepdims=c["keepdims"], name=c["name"]),
        keras.layers.MaxPooling2D: lambda c: tfk.layers.MaxPooling2D(
            c["pool_size"], c["strides"], c["padding"], name=c["name"]),
        keras.layers.BatchNormalization: lambda c: tfk.layers.BatchNormalization(
            momentum=c["momentum"], epsilon=c["epsilon"], name=c["name"]),
        keras.layers.Conv2D: lambda c: tfk.layers.Conv2D(
            c["filters"], c["kernel_size"], c["strides"], c["padding"],
            use_bias=c["use_bias"], name=c["name"]),
        keras.layers.Dense: lambda c: tfk.layers.Dense(c["units"], name=c["name"]),
    }
    functional = graph.as_functional(model)
    inputs = tfk.Input(functional.inputs[0].shape[1:], name="image")
    tensors = {id(functional.inputs[0]): inputs}
    new_layers = []
    for node in graph.model_nodes(functional):
        layer = node.operation
        if isinstance(layer, sk.ZeroPadShortcut):
            new = _zero_pad_shortcut(layer, node.input_tensors[0].shape[-1])
        elif type(layer) in simple:
            new = simple[type(layer)](layer.get_config())
        else:
            raise ValueError(f"No tf_keras equivalent for layer '{layer.name}' "
                             f"({type(layer).__name__}).")
        args = [tensors[id(t)] for t in node.input_tensors]
        out = new(args if len(args) > 1 else args[0])
        tensors[id(node.output_tensors[0])] = out
        new_layers.append((layer, new))
    rebuilt = tfk.Model(inputs, tensors[id(functional.outputs[0])], name=model.name)
    for old, new in new_layers:
        if old.weights:
            new.set_weights([w.numpy() for w in old.weights])
    return rebuilt


def main(argv):
    del argv
    os.makedirs(OUTPUT_DIR.value, exist_ok=True)
    tf.keras.utils.set_random_seed(SEED.value)
    dense = keras.models.load_model(DENSE_MODEL.value)
    data = datasets.load(DATASET.value, DATA_DIR.value).subset(TRAIN_SUBSET.value, TEST_SUBSET.value,
                                               seed=SEED.value)
    train = datasets.pipeline(data.train, BATCH.value, training=True, seed=SEED.value)
    test = datasets.pipeline(data.test, BATCH.value, training=False)
    model = to_tf_keras(dense)
    x = next(iter(test))[0]
    gap = float(np.abs(model(x, training=False).numpy() - dense(x, training=False)).max())
    print(f"tf_keras rebuild: max |logit difference| = {gap:.2e}", flush=True)

    steps = int(np.ceil(len(data.train) / BATCH.value)) * EPOCHS.value
    schedule = tfmot.sparsity.keras.PolynomialDecay(
        0.0, 1.0 - BUDGET.value, begin_step=0, end_step=max(1, int(0.7 * steps)),
        frequency=max(1, steps // 20))

    def wrap(layer):
        if isinstance(layer, (tfk.layers.Conv2D, tfk.layers.Dense)):
            return tfmot.sparsity.keras.prune_low_magnitude(layer, pruning_schedule=schedule)
        return layer.__class__.from_config(layer.get_config())

    pruned = tfk.models.clone_model(model, clone_function=wrap)
    for layer in pruned.layers:  # clone_model made fresh weights: copy them by name
        source = model.get_layer(layer.name.replace("prune_low_magnitude_", ""))
        if source.weights:
            target = layer.layer if hasattr(layer, "layer") else layer
            target.set_weights(source.get_weights())
    lr = tfk.optimizers.schedules.CosineDecay(LR.value, steps)
    pruned.compile(tfk.optimizers.SGD(lr, momentum=0.9),
                   tfk.losses.SparseCategoricalCrossentropy(from_logits=True),
                   metrics=["accuracy"])
    pruned.fit(train, epochs=EPOCHS.value, validation_data=test, verbose=2,
               callbacks=[tfmot.sparsity.keras.UpdatePruningStep()])
    final = tfmot.sparsity.keras.strip_pruning(pruned)

    correct = count = 0
    for xb, yb in test:
        correct += int(np.sum(np.argmax(final(xb, training=False), -1) == yb.numpy()))
        count += int(yb.shape[0])
    per_layer = sk.flops.per_layer_dense_macs(dense)
    nonzero_macs, zeros, weights = 0.0, 0, 0
    for name, macs in per_layer.items():
        kernel = final.get_layer(name).get_weights()[0]
        nonzero_macs += macs * float(np.mean(kernel != 0))
        zeros += int(np.sum(kernel == 0))
        weights += kernel.size
    # Batch 1, static shapes, like the other exports (LiteRT's CompiledModel wants them).
    single = tfk.models.clone_model(
        final, input_tensors=tfk.Input(final.input_shape[1:], batch_size=1, name="image"))
    single.set_weights(final.get_weights())
    paths = {}
    for kind, optimizations in (("tflite", []), ("tflite_sparse",
                                                 [tf.lite.Optimize.EXPERIMENTAL_SPARSITY])):
        converter = tf.lite.TFLiteConverter.from_keras_model(single)
        converter.optimizations = optimizations
        paths[kind] = os.path.join(OUTPUT_DIR.value, f"{kind}.tflite")
        with open(paths[kind], "wb") as f:
            f.write(converter.convert())
    result = {
        "name": f"{dense.name} tfmot budget={BUDGET.value}",
        "mode": "tfmot",
        "budget": BUDGET.value,
        "top1_error": 1.0 - correct / count,
        "num_samples": count,
        "dense_macs": int(sum(per_layer.values())),
        "mean_macs": nonzero_macs,
        "percentiles": {"p95": nonzero_macs},
        "flops_ratio": nonzero_macs / sum(per_layer.values()),
        "pruned_fraction": 1.0 - nonzero_macs / sum(per_layer.values()),
        "weight_sparsity": zeros / weights,
        "rebuild_max_logit_diff": gap,
        "exports": paths,
        "command": "python " + " ".join(sys.argv),
    }
    with open(os.path.join(OUTPUT_DIR.value, "result.json"), "w") as f:
        json.dump(result, f, indent=2)
    print(json.dumps({k: v for k, v in result.items() if k != "exports"}, indent=2))


if __name__ == "__main__":
    flags.mark_flags_as_required(["dense_model", "output_dir"])
    app.run(main)
