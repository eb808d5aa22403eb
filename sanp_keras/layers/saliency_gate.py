"""SaliencyGate: per-sample saliency scores and 0/1 channel decisions (SANP eq. 1-8)."""

import math

import keras
from keras import ops

from sanp_keras.layers import _checks
from sanp_keras.layers.binarize import hard_decisions
from sanp_keras.layers.binarize import improved_semantic_hash

RESCALES = ("sigmoid", "none")


@keras.saving.register_keras_serializable(package="sanp_keras")
class SaliencyGate(keras.layers.Layer):
    """Predicts, from the features entering a convolution, which of its outputs to compute.

    Saliency (paper eq. 5-6, a Squeeze-and-Excitation branch without the sigmoid):

        s = GlobalAveragePool(x)                     # (B, C_in)
        g = W2 . relu(W1 . s + c1) + c2              # (B, units)
            W1: (C_in, hidden), hidden = max(min_hidden, ceil(C_in / reduction))

    Decisions by `mode`:
    - `"sanp"`: Improved Semantic Hashing of `g` (see `binarize.py`): noisy, half
      continuous and half discrete in training; exactly `1[g > 0]` in inference,
      where the highest scoring channel also stays open (a layer keeps at least one).
    - `"static"`: the same branch fed with one learned vector `v` (C_in,) in place of
      `s`, `g = W2 . relu(W1 . v + c1) + c2`, one score vector per layer broadcast to
      every sample, binarized like `"sanp"` (the paper's STATIC ablation: saliency from
      a learned vector instead of the input, layer-adaptive only). The same
      parametrization as SANP keeps the comparison about adaptivity alone: with `g`
      itself as the only weight, the cost loss moves each score by `gate_speed * lambda`
      per step, and a short fine-tune barely closes a channel.
    - `"fixed_k"`: the top `k = max(1, round(keep_ratio * units))` scores of each
      sample, no binarization function (the paper's FIXED K ablation).
    - `"fbs"`: Feature Boosting and Suppression (Gao et al. 2019, eq. 6-8), a baseline:
      `g = relu(mean_hw(|x|) . W + c)`, one linear layer on the L1-subsampled input
      (`W` (C_in, units) starts at zero, `c` around `fbs_bias_init`), the top `k`
      scores kept (k-winners-take-all, as `"fixed_k"`) less those at 0 (their output
      would be 0 anyway); the kept channels are scaled by `g` itself (`scale`), and
      training adds the lasso `fbs_l1 * mean_i sum_c g`.
    - `"dense"`: every channel open; the layer holds no weights.

    `c2` starts around `bias_init` (3.0 +- 1: `sigmoid(3) = 0.95`) and `W2` at zero, so
    a freshly inserted gate keeps every channel open and barely rescales it: converting
    a trained backbone starts from the backbone.

    Args:
        units: number of channels to decide on (the convolution's `filters`).
        reduction: reduction rate `r` of the hidden layer (SE uses 16).
        min_hidden: smallest hidden width, so that thin inputs still get a usable
            bottleneck (an RGB image with `r = 16` would otherwise get 0 units).
        mode: one of `"sanp"`, `"fixed_k"`, `"static"`, `"dense"`.
        keep_ratio: fraction of channels kept per sample in `"fixed_k"` mode.
        noise_stddev: standard deviation `sigma` of the training noise.
        discrete_fraction: fraction of samples whose forward pass uses the binary code
            in training (ISH uses one half).
        bias_init, bias_spread: `c2` starts uniform in
            `bias_init +- bias_spread`: open, and distinct so that channels close one
            by one rather than all together.
        kernel_initializer: initializer of `W1`.
        kernel_regularizer: regularizer of `W1` and `W2`.
        seed: seed of the noise and of the discrete/continuous draw.
        fbs_l1: weight of FBS's lasso on the saliencies (its paper uses 1e-8).
        fbs_bias_init: FBS's `c` starts uniform in `fbs_bias_init +- 0.1`, so a fresh
            gate scales channels by about 1 (FBS's `g` replaces the BN scale).
        rescale: `"sigmoid"` (the paper: a kept channel is scaled by `sigmoid(g)`) or
            `"none"` (kept channels unscaled; sanp, static and fixed_k).

    Input shape:
        4D tensor `(batch, height, width, channels)`.

    Output shape:
        A tuple `(scores, decisions)`, each `(batch, units)`. In inference the
        decisions are exactly 0.0 or 1.0.

    Example:

    >>> x = keras.ops.ones((2, 8, 8, 16))
    >>> scores, decisions = SaliencyGate(32)(x)
    >>> decisions.shape
    TensorShape([2, 32])
    """

    def __init__(
        self,
        units,
        reduction=16,
        min_hidden=8,
        mode="sanp",
        keep_ratio=0.5,
        noise_stddev=1.0,
        discrete_fraction=0.5,
        bias_init=3.0,
        bias_spread=1.0,
        kernel_initializer="he_normal",
        kernel_regularizer=None,
        seed=None,
        fbs_l1=1e-8,
        fbs_bias_init=1.0,
        rescale="sigmoid",
        **kwargs,
    ):
        super().__init__(**kwargs)
        self.units = _checks.check_int_at_least("units", units, 1)
        self.reduction = _checks.check_int_at_least("reduction", reduction, 1)
        self.min_hidden = _checks.check_int_at_least("min_hidden", min_hidden, 1)
        self.mode = _checks.check_mode(mode)
        self.keep_ratio = _checks.check_float_in("keep_ratio", keep_ratio, 0.0, 1.0)
        self.noise_stddev = _checks.check_float_in(
            "noise_stddev", noise_stddev, 0.0, math.inf, low_open=False, high_open=True
        )
        self.discrete_fraction = _checks.check_float_in(
            "discrete_fraction", discrete_fraction, 0.0, 1.0, low_open=False
        )
        self.bias_init = float(bias_init)
        self.bias_spread = _checks.check_float_in(
            "bias_spread", bias_spread, 0.0, math.inf, low_open=False, high_open=True
        )
        self.kernel_initializer = keras.initializers.get(kernel_initializer)
        self.kernel_regularizer = keras.regularizers.get(kernel_regularizer)
        self.seed = seed
        self.fbs_l1 = _checks.check_float_in(
            "fbs_l1", fbs_l1, 0.0, math.inf, low_open=False, high_open=True
        )
        self.fbs_bias_init = float(fbs_bias_init)
        if rescale not in RESCALES:
            raise ValueError(
                f"Invalid value for argument `rescale`. Expected one of {RESCALES}. "
                f"Received: rescale={rescale!r}")
        self.rescale = rescale
        self.seed_generator = keras.random.SeedGenerator(seed)
        # FBS's decisions with every one of the top k open, zero scores too: the most
        # its k can cost (training's cost measurements set it; not saved)
        self.every_top_k = False

    @property
    def k(self):
        """Channels kept per sample in `"fixed_k"` and `"fbs"` modes (at least one)."""
        return max(1, int(round(self.keep_ratio * self.units)))

    def hidden_units(self, input_channels):
        return max(self.min_hidden, math.ceil(input_channels / self.reduction))

    def build(self, input_shape):
        c_in = _checks.check_image_shape(input_shape, self.name)
        # Distinct starting scores: with equal ones, the cost loss pushes every channel
        # of a layer across zero at the same step and the layer collapses at once.
        bias_init = keras.initializers.RandomUniform(
            self.bias_init - self.bias_spread, self.bias_init + self.bias_spread, seed=self.seed
        )
        if self.mode in ("sanp", "fixed_k", "static"):
            hidden = self.hidden_units(c_in)
            self.squeeze_kernel = self.add_weight(
                name="squeeze_kernel",
                shape=(c_in, hidden),
                initializer=self.kernel_initializer,
                regularizer=self.kernel_regularizer,
            )
            self.squeeze_bias = self.add_weight(
                name="squeeze_bias", shape=(hidden,), initializer="zeros"
            )
            self.excite_kernel = self.add_weight(
                name="excite_kernel",
                shape=(hidden, self.units),
                initializer="zeros",
                regularizer=self.kernel_regularizer,
            )
            self.excite_bias = self.add_weight(
                name="excite_bias", shape=(self.units,), initializer=bias_init
            )
        if self.mode == "static":
            self.static_input = self.add_weight(
                name="static_input", shape=(c_in,), initializer="ones"
            )
        elif self.mode == "fbs":
            self.excite_kernel = self.add_weight(
                name="excite_kernel",
                shape=(c_in, self.units),
                initializer="zeros",
                regularizer=self.kernel_regularizer,
            )
            self.excite_bias = self.add_weight(
                name="excite_bias",
                shape=(self.units,),
                initializer=keras.initializers.RandomUniform(
                    self.fbs_bias_init - 0.1, self.fbs_bias_init + 0.1, seed=self.seed
                ),
            )

    def saliency(self, inputs):
        """Saliency scores `g`, (B, units); zeros in `"dense"` mode."""
        batch = ops.shape(inputs)[0]
        if self.mode == "dense":
            return ops.zeros((batch, self.units), dtype=self.compute_dtype)
        if self.mode == "static":
            return ops.broadcast_to(self.static_scores()[None, :], (batch, self.units))
        if self.mode == "fbs":
            s = ops.mean(ops.abs(inputs), axis=(1, 2))  # (B, C_in)
            return ops.relu(ops.matmul(s, self.excite_kernel) + self.excite_bias)
        s = ops.mean(inputs, axis=(1, 2))  # (B, C_in)
        h = ops.relu(ops.matmul(s, self.squeeze_kernel) + self.squeeze_bias)  # (B, hidden)
        return ops.matmul(h, self.excite_kernel) + self.excite_bias  # (B, units)

    def hard_decisions(self, scores):
        """The decisions inference would take for `scores`: exactly 0.0 or 1.0.

        At least one channel stays open for every sample (the highest scoring one): a
        layer with no output would break the network, and mobile runtimes (XNNPACK)
        cannot run a zero-sized tensor.
        """
        if self.mode == "dense":
            return ops.ones_like(scores)
        if self.mode in ("fixed_k", "fbs"):
            kth = ops.top_k(scores, self.k, sorted=True)[0][:, -1:]  # (B, 1)
            won = ops.greater_equal(scores, kth)  # the top k (k-winners-take-all)
            if self.mode == "fixed_k" or self.every_top_k:
                return ops.cast(won, scores.dtype)  # (fbs: the most its k can open)
            won = ops.cast(ops.logical_and(won, ops.greater(scores, 0)), scores.dtype)
        else:
            won = hard_decisions(scores)
        best = ops.one_hot(ops.argmax(scores, axis=-1), self.units, dtype=scores.dtype)
        return ops.maximum(won, best)  # (B, units)

    def static_scores(self):
        """The one score vector of a `"static"` gate, (units,)."""
        h = ops.relu(ops.matmul(self.static_input[None, :], self.squeeze_kernel)
                     + self.squeeze_bias)  # (1, hidden)
        return (ops.matmul(h, self.excite_kernel) + self.excite_bias)[0]

    def scale(self, scores):
        """The factor on each kept channel: `sigmoid(g)` (SANP eq. 4), `g` for FBS; 1
        with `rescale="none"` (the gradient then reaches the gate through ISH alone)."""
        if self.mode == "fbs":
            return scores
        if self.rescale == "none":
            return ops.ones_like(scores)
        return ops.sigmoid(scores)

    def call(self, inputs, training=None):
        scores = self.saliency(inputs)  # (B, units)
        if training and self.mode == "fbs" and self.fbs_l1 > 0:
            self.add_loss(self.fbs_l1 * ops.mean(ops.sum(scores, axis=-1)))
        if not training or self.mode in ("dense", "fixed_k", "fbs"):
            return scores, self.hard_decisions(scores)
        noise = keras.random.normal(
            ops.shape(scores),
            stddev=self.noise_stddev,
            dtype=scores.dtype,
            seed=self.seed_generator,
        )
        draw = keras.random.uniform(
            (ops.shape(scores)[0], 1), dtype=scores.dtype, seed=self.seed_generator
        )
        use_discrete = ops.less(draw, self.discrete_fraction)  # (B, 1)
        return scores, improved_semantic_hash(scores, noise, use_discrete)

    def compute_output_shape(self, input_shape):
        shape = (input_shape[0], self.units)
        return shape, shape

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "units": self.units,
                "reduction": self.reduction,
                "min_hidden": self.min_hidden,
                "mode": self.mode,
                "keep_ratio": self.keep_ratio,
                "noise_stddev": self.noise_stddev,
                "discrete_fraction": self.discrete_fraction,
                "bias_init": self.bias_init,
                "bias_spread": self.bias_spread,
                "kernel_initializer": keras.initializers.serialize(
                    self.kernel_initializer
                ),
                "kernel_regularizer": keras.regularizers.serialize(
                    self.kernel_regularizer
                ),
                "seed": self.seed,
                "fbs_l1": self.fbs_l1,
                "fbs_bias_init": self.fbs_bias_init,
                "rescale": self.rescale,
            }
        )
        return config
