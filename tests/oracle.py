"""NumPy references the tests compare the Keras code against."""

import keras
import numpy as np


def pad_same(x, kernel, stride):
    """Pads (N, H, W, C) as TF's 'same' padding does."""
    _, h, w, _ = x.shape
    pads = []
    for size in (h, w):
        out = -(-size // stride)
        total = max((out - 1) * stride + kernel - size, 0)
        pads.append((total // 2, total - total // 2))
    return np.pad(x, ((0, 0), pads[0], pads[1], (0, 0)))


def conv2d(x, kernel, stride=1, padding="valid", bias=None):
    """Direct convolution: x (N, H, W, C_in), kernel (k, k, C_in, C_out)."""
    k = kernel.shape[0]
    if padding == "same":
        x = pad_same(x, k, stride)
    n, h, w, _ = x.shape
    oh, ow = (h - k) // stride + 1, (w - k) // stride + 1
    out = np.zeros((n, oh, ow, kernel.shape[-1]))
    for i in range(oh):
        for j in range(ow):
            patch = x[:, i * stride : i * stride + k, j * stride : j * stride + k, :]
            out[:, i, j, :] = np.einsum("nabc,abcd->nd", patch, kernel)
    if bias is not None:
        out += bias
    return out


def batch_norm(y, gamma, beta, mean, var, eps):
    return gamma * (y - mean) / np.sqrt(var + eps) + beta


def sigmoid(z):
    return 1.0 / (1.0 + np.exp(-z))


def gate_scores(x, w1, c1, w2, c2):
    """SE-style saliency g = W2 relu(W1 GAP(x) + c1) + c2, (N, C_out)."""
    s = x.mean(axis=(1, 2))
    return np.maximum(s @ w1 + c1, 0.0) @ w2 + c2


def inference_decisions(g):
    """1[g > 0], with the best channel of every sample kept open."""
    b = (g > 0).astype(np.float64)
    b[np.arange(len(g)), g.argmax(axis=1)] = 1.0
    return b


def randomize(layer, rng):
    """Random weights (batch-norm variances positive) for a built layer."""
    values = []
    for w in layer.weights:
        shape = tuple(w.shape)
        if "variance" in w.path:
            values.append(rng.uniform(0.5, 1.5, shape))
        elif w.path.endswith(("cost_weight", "active_rate")):
            values.append(w.numpy())
        else:
            values.append(rng.normal(0.0, 0.5, shape))
    layer.set_weights(values)


def randomize_model(model, seed):
    """`randomize` on every layer of a model that has weights; returns the model."""
    rng = np.random.RandomState(seed)
    for layer in model.layers:
        if layer.weights:
            randomize(layer, rng)
    return model


def randomize_batch_norm(model, seed=0):
    """Varied batch-norm scales, shifts and statistics (scales in [0.1, 1], distinct, so
    that a threshold on them orders channels); returns the model."""
    rng = np.random.RandomState(seed)
    for layer in model.layers:
        if isinstance(layer, keras.layers.BatchNormalization):
            g, b, m, v = (w.shape for w in layer.get_weights())
            layer.set_weights([rng.uniform(0.1, 1.0, g), rng.normal(0, 0.5, b),
                               rng.normal(0, 0.1, m), rng.uniform(0.5, 1.5, v)])
    return model


def images(n, seed, size=8):
    """Noise plus a per-sample colour offset, so that saliency varies between samples."""
    rng = np.random.RandomState(seed)
    x = rng.normal(size=(n, size, size, 3)) + 2 * rng.normal(size=(n, 1, 1, 3))
    return x.astype("float32")
