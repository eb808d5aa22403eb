import numpy as np
import tensorflow as tf

from sanp_keras.layers.binarize import improved_semantic_hash
from sanp_keras.layers.binarize import saturating_sigmoid
from tests import oracle


def test_saturating_sigmoid_matches_formula():
    z = np.linspace(-6, 6, 101).astype("float32")
    expected = np.clip(1.2 * oracle.sigmoid(z) - 0.1, 0.0, 1.0)
    np.testing.assert_allclose(saturating_sigmoid(z), expected, atol=1e-6)


def test_ish_forward_mixes_binary_and_continuous_rows():
    g = tf.constant([[-1.0, 0.3, 2.0], [-1.0, 0.3, 2.0]])
    noise = tf.zeros_like(g)
    use_discrete = tf.constant([[True], [False]])
    out = improved_semantic_hash(g, noise, use_discrete).numpy()
    np.testing.assert_array_equal(out[0], [0.0, 1.0, 1.0])
    np.testing.assert_allclose(out[1], np.clip(1.2 * oracle.sigmoid(g[1].numpy()) - 0.1, 0, 1),
                               atol=1e-6)


def test_ish_gradient_is_straight_through_even_where_binary_or_saturated():
    g = tf.Variable([[-6.0, -0.5, 0.5, 6.0]])
    noise = tf.constant([[0.0, 0.2, -0.2, 0.0]])
    for discrete in (True, False):
        with tf.GradientTape() as tape:
            out = improved_semantic_hash(g, noise, tf.constant([[discrete]]))
            loss = tf.reduce_sum(out * tf.constant([[1.0, 2.0, 3.0, 4.0]]))
        grad = tape.gradient(loss, g).numpy()
        s = oracle.sigmoid(g.numpy() + noise.numpy())
        upstream = np.array([[1.0, 2.0, 3.0, 4.0]])
        np.testing.assert_allclose(grad, upstream * 1.2 * s * (1 - s), rtol=1e-4)
        assert np.all(grad != 0)  # saturated channels (|g| = 6) still learn


def test_ish_under_jit_compile():
    fn = tf.function(improved_semantic_hash, jit_compile=True)
    g = tf.constant([[-1.0, 1.0]])
    out = fn(g, tf.zeros_like(g), tf.constant([[True]]))
    np.testing.assert_array_equal(out.numpy(), [[0.0, 1.0]])
