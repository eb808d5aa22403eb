"""Distillation from the backbone: the loss against a NumPy oracle, the packed labels."""

import keras
import numpy as np
import pytest
import tensorflow as tf

import sanp_keras as sk
from sanp_keras import distillation


def _softmax(z):
    e = np.exp(z - z.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


@pytest.mark.parametrize("alpha,temperature", [(0.0, 4.0), (0.7, 4.0), (1.0, 2.0)])
def test_loss_equals_hintons_formula(alpha, temperature):
    rng = np.random.default_rng(0)
    student, teacher = rng.normal(0, 3, (6, 10)), rng.normal(0, 3, (6, 10))
    labels = rng.integers(0, 10, 6)
    packed = np.concatenate([labels[:, None], teacher], -1).astype("float32")
    loss = distillation.DistillationLoss(alpha, temperature)(packed, student.astype("float32"))
    hard = -np.log(_softmax(student)[np.arange(6), labels])
    p, q = _softmax(teacher / temperature), _softmax(student / temperature)
    soft = temperature**2 * np.sum(p * (np.log(p) - np.log(q)), -1)
    np.testing.assert_allclose(float(loss), np.mean((1 - alpha) * hard + alpha * soft),
                               rtol=1e-5)
    with pytest.raises(ValueError, match="alpha=1.5"):
        distillation.DistillationLoss(alpha=1.5)


def test_with_teacher_packs_the_teachers_logits_on_the_same_images():
    teacher = sk.models.create_model("resnet20", gated=False, input_shape=(8, 8, 3))
    x = np.random.default_rng(1).normal(size=(5, 8, 8, 3)).astype("float32")
    y = np.array([3, 1, 4, 1, 5])
    ds = distillation.with_teacher(tf.data.Dataset.from_tensor_slices((x, y)).batch(5),
                                   teacher)
    images, packed = next(iter(ds))
    np.testing.assert_array_equal(images.numpy(), x)
    np.testing.assert_array_equal(packed.numpy()[:, 0], y)
    np.testing.assert_allclose(packed.numpy()[:, 1:], teacher(x, training=False), atol=1e-5)
    accuracy = distillation.PackedAccuracy()
    logits = np.eye(10, dtype="float32")[[3, 1, 4, 2, 2]]  # 3 of 5 right
    accuracy.update_state(packed, logits)
    assert float(accuracy.result()) == pytest.approx(0.6)


def test_a_gated_model_fits_saves_and_resumes_with_the_distillation_loss(tmp_path):
    teacher = sk.models.create_model("resnet20", gated=False, input_shape=(8, 8, 3))
    student = sk.convert(teacher)
    rng = np.random.default_rng(2)
    ds = tf.data.Dataset.from_tensor_slices(
        (rng.normal(size=(16, 8, 8, 3)).astype("float32"), rng.integers(0, 10, 16))).batch(8)
    student.compile("sgd", distillation.DistillationLoss(0.5, 4.0),
                    metrics=[distillation.PackedAccuracy()])
    history = student.fit(distillation.with_teacher(ds, teacher), epochs=1, verbose=0,
                          shuffle=False)
    assert np.isfinite(history.history["loss"][0]) and "accuracy" in history.history
    student.save(tmp_path / "s.keras")
    loaded = keras.models.load_model(tmp_path / "s.keras")
    assert isinstance(loaded.loss, distillation.DistillationLoss)
    assert loaded.loss.alpha == 0.5 and loaded.loss.temperature == 4.0
