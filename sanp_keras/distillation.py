"""Knowledge distillation from the dense backbone while a pruned model fine-tunes.

Hinton, Vinyals, Dean 2015, "Distilling the knowledge in a neural network", section 2:

    loss = (1 - alpha) * CE(y, s) + alpha * T^2 * KL(softmax(t / T) || softmax(s / T))

with `s` the student's logits, `t` the teacher's on the same (augmented) images, `T`
the temperature; `T^2` keeps the soft term's gradients on the scale of the hard one's
as `T` changes (their section 2). Not in the SANP paper: an option of the recipe.

The teacher runs in the input pipeline (`with_teacher`), not in the model: the label
of each image becomes one float row `[y, t_1 .. t_K]` (B, 1 + K), which
`DistillationLoss` and `PackedAccuracy` unpack. The student stays the plain gated
functional model, so its checkpoints, resuming, `strip` and every export are those
of a model trained without distillation.
"""

import keras
import tensorflow as tf
from keras import ops

from sanp_keras.layers import _checks


def with_teacher(dataset, teacher):
    """`(x, y)` batches -> `(x, [y, teacher(x)])`, the labels packed as (B, 1 + K) float32.

    The teacher sees the same augmented images as the student (the map runs after the
    augmentation), in inference mode.
    """

    def pack(x, y):
        logits = tf.cast(teacher(x, training=False), tf.float32)  # (B, K)
        return x, tf.concat([tf.cast(y, tf.float32)[:, None], logits], axis=-1)

    return dataset.map(pack, num_parallel_calls=tf.data.AUTOTUNE)


def _unpack(y_true):
    labels = ops.cast(y_true[:, 0], "int32")  # (B,)
    return labels, y_true[:, 1:]  # (B,), (B, K)


@keras.saving.register_keras_serializable(package="sanp_keras")
class DistillationLoss(keras.losses.Loss):
    """Hinton et al.'s loss on labels packed by `with_teacher` (see the module).

    Args:
        alpha: weight of the soft (teacher) term, in [0, 1]; 0 is plain cross-entropy.
        temperature: `T`, > 0.
    """

    def __init__(self, alpha=0.5, temperature=4.0, name="distillation", **kwargs):
        super().__init__(name=name, **kwargs)
        self.alpha = _checks.check_float_in("alpha", alpha, 0.0, 1.0, low_open=False)
        self.temperature = _checks.check_float_in(
            "temperature", temperature, 0.0, float("inf"), high_open=True)

    def call(self, y_true, y_pred):
        labels, teacher = _unpack(y_true)
        student = ops.cast(y_pred, "float32")  # (B, K)
        hard = keras.losses.sparse_categorical_crossentropy(labels, student, from_logits=True)
        t = self.temperature
        p_teacher = ops.softmax(teacher / t, axis=-1)
        kl = ops.sum(
            p_teacher * (ops.log_softmax(teacher / t, axis=-1)
                         - ops.log_softmax(student / t, axis=-1)), axis=-1)  # (B,)
        return (1.0 - self.alpha) * hard + self.alpha * t * t * kl

    def get_config(self):
        return {**super().get_config(), "alpha": self.alpha, "temperature": self.temperature}


@keras.saving.register_keras_serializable(package="sanp_keras")
class PackedAccuracy(keras.metrics.SparseCategoricalAccuracy):
    """Top-1 accuracy against the true label of a `with_teacher` row."""

    def __init__(self, name="accuracy", **kwargs):
        super().__init__(name=name, **kwargs)

    def update_state(self, y_true, y_pred, sample_weight=None):
        labels, _ = _unpack(y_true)
        return super().update_state(labels, y_pred, sample_weight)
