"""Gates nobody trained, for timing the kernels on sample-dependent decisions."""

import numpy as np

import sanp_keras as sk


def randomize_gates(model, images, cost=0.5, seed=0):
    """Draws `model`'s gate weights at random (the excitation ~ N(0, 1), biases
    ~ N(0, 0.3)) and shifts the biases together until about `cost` of the dense MACs
    remain on `images`: every layer partly open, a different part per sample.
    Returns `model`."""
    gates = [layer.gate for layer in sk.flops.gated_layers(model)]
    rng = np.random.RandomState(seed)
    biases = []
    for gate in gates:
        gate.excite_kernel.assign(rng.normal(0, 1.0, gate.excite_kernel.shape))
        biases.append(rng.normal(0, 0.3, gate.excite_bias.shape))
    mean_macs = sk.flops.mean_macs_function(model)
    dense = sk.flops.dense_macs(model)
    low, high = -5.0, 5.0  # the shift: more open as it grows
    for _ in range(20):
        shift = (low + high) / 2
        for gate, bias in zip(gates, biases):
            gate.excite_bias.assign(bias + shift)
        if mean_macs(images) / dense > cost:
            high = shift
        else:
            low = shift
    return model
