"""Improved Semantic Hashing, the binarization of SANP (paper eq. 7-8).

Kaiser & Bengio 2018, "Discrete autoencoders for sequence models", section 2.1;
the saturating sigmoid is from Kaiser & Sutskever 2015.

Training:

    v = saturating_sigmoid(g + n),   n ~ Normal(0, sigma^2)
    b = 1[v > 0.5]                   (equivalently 1[g + n > 0])
    forward: v for one half of the samples, b for the other half
    backward: the gradient always flows to v, also where b was used

Inference: no noise, b = 1[g > 0], exactly 0 or 1.

One choice differs from a literal reading: the backward pass uses the derivative of
the *unclipped* `1.2 * sigmoid(z) - 0.1`. The clipped one is zero for |z| > 2.4, so a
channel whose saliency has sunk far below zero would never receive a gradient again
and could never reopen (METHOD.md section 1 asks that it can).
"""

import tensorflow as tf
from keras import ops


def saturating_sigmoid(x):
    """`max(0, min(1, 1.2 * sigmoid(x) - 0.1))` (Kaiser & Sutskever 2015)."""
    return ops.clip(1.2 * ops.sigmoid(x) - 0.1, 0.0, 1.0)


def hard_decisions(scores):
    """Inference decisions `1[g > 0]`, exactly 0.0 or 1.0, in the dtype of `scores`."""
    return ops.cast(ops.greater(scores, 0), scores.dtype)


def improved_semantic_hash(scores, noise, use_discrete):
    """Training-time ISH with a straight-through gradient.

    Args:
        scores: saliency scores `g`, shape `(B, C)`.
        noise: Gaussian noise of the same shape as `scores` (zeros for none).
        use_discrete: boolean tensor broadcastable to `(B, C)`; where True the forward
            value is the binary code `b`, elsewhere the continuous `v`.

    Returns:
        A `(B, C)` tensor, `where(use_discrete, b, v)` in the forward pass, whose
        gradient with respect to `scores` is `1.2 * sigmoid'(g + n)` everywhere.
    """

    @tf.custom_gradient
    def _ish(g):
        s = tf.sigmoid(g + noise)  # (B, C)
        v = tf.clip_by_value(1.2 * s - 0.1, 0.0, 1.0)
        b = tf.cast(v > 0.5, v.dtype)
        out = tf.where(use_discrete, b, v)

        def grad(upstream):
            return upstream * 1.2 * s * (1.0 - s)

        return out, grad

    return _ish(scores)
