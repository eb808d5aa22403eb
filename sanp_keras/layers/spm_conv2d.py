"""SPMConv2D: a convolution with its Saliency-and-Pruning Module (SANP eq. 3-4)."""

import math

import keras
from keras import ops

from sanp_keras.layers import _batch_norm
from sanp_keras.layers import _checks
from sanp_keras.layers.saliency_gate import SaliencyGate


GATE_GRADIENTS = ("all", "task", "none")


@keras.saving.register_keras_serializable(package="sanp_keras")
class SPMConv2D(keras.layers.Layer):
    """Convolution + batch norm + saliency rescaling + channel gate.

    For output channel `c` of sample `i` (paper eq. 3-4):

        y[i, ..., c] = b[i, c] * sigmoid(g[i, c]) * BN(W[c] * x[i])    then `activation`

    where `g` and `b` are the saliency scores and decisions of a `SaliencyGate` fed with
    the layer's *input* `x`, so the decision is known before the convolution runs
    (`mode="fbs"` scales by `g` itself, see `SaliencyGate.scale`). The
    rescaling factor `sigmoid(g)` is bounded and non-negative (it never flips a
    feature's sign) and keeps a gradient for closed channels. In inference a closed
    channel is exactly zero. Under a mixed precision policy the gate (and the cost
    loss) compute in float32, the convolution in the policy's compute dtype. In
    `mode="dense"` no gate runs and `y = activation(BN(W * x))`, the plain layer.

    Budget control (see `sanp_keras.BudgetCallback`) goes through two non-trainable
    variables this layer owns:
    - `cost_weight`, `cost_gain`: set by the callback; in training the layer adds
      `cost_weight * sum_c mean_i sigmoid(g[i, c])` to the model's losses (paper eq. 9)
      with a straight-through gradient scaled by `cost_gain` (see `_soft_activity`);
      with `cost_floor > 0` the push spares the `ceil(cost_floor * filters)` channels
      of highest mean score in the batch, so the cost loss alone never empties a layer;
    - `active_rate`: in training, the fraction of the batch for which each channel
      would be open at inference, read by the callback to estimate the cost.

    Args:
        filters, kernel_size, strides, padding, use_bias, kernel_initializer,
        bias_initializer, kernel_regularizer, bias_regularizer, kernel_constraint,
        bias_constraint: as in `keras.layers.Conv2D`. `data_format` must be
            `"channels_last"`; `dilation_rate` and `groups` must be 1.
        activation: applied after gating (zero-preserving ones keep closed channels
            zero, which is what lets the next layer skip them).
        use_batch_norm: whether a BatchNormalization follows the convolution.
        bn_momentum, bn_epsilon, bn_center, bn_scale: its arguments.
        mode, reduction, min_hidden, keep_ratio, noise_stddev, discrete_fraction,
        gate_bias_init, gate_bias_spread, gate_rescale, seed: the gate's arguments
            (see `SaliencyGate`; `gate_rescale` is its `rescale`).
        cost_floor: fraction of the channels the cost loss never pushes to close
            (those of highest mean score in each training batch; 0: every channel,
            the paper). Training only: inference decides as always, `1[g > 0]`.
        gate_gradient: which losses reach the layers before this one through the
            gate's input `x` (one of `GATE_GRADIENTS`): `"all"` (the paper: the task
            loss and the cost loss of eq. 9), `"task"` (the cost loss trains the gate
            alone, so the controller's pressure never reshapes the backbone's
            features) or `"none"` (the gate reads a detached copy of `x`).
            The gate's own weights train from both losses in every case.
        backbone_trainable: whether the convolution and batch norm train; False
            trains the gate alone (the paper's warm-up). Saved with the layer.

    Input shape:
        4D tensor `(batch, height, width, in_channels)`.

    Output shape:
        4D tensor `(batch, new_height, new_width, filters)`; with
        `return_decisions=True` in `call`, also the decisions `(batch, filters)`.

    Example:

    >>> inputs = keras.Input((32, 32, 3))
    >>> x = SPMConv2D(16, 3, padding="same", activation="relu")(inputs)
    >>> x = SPMConv2D(32, 3, strides=2, padding="same", activation="relu")(x)
    """

    def __init__(
        self,
        filters,
        kernel_size,
        strides=(1, 1),
        padding="valid",
        data_format=None,
        dilation_rate=(1, 1),
        groups=1,
        activation=None,
        use_bias=False,
        kernel_initializer="glorot_uniform",
        bias_initializer="zeros",
        kernel_regularizer=None,
        bias_regularizer=None,
        kernel_constraint=None,
        bias_constraint=None,
        use_batch_norm=True,
        bn_momentum=0.99,
        bn_epsilon=1e-3,
        bn_center=True,
        bn_scale=True,
        mode="sanp",
        reduction=16,
        min_hidden=8,
        keep_ratio=0.5,
        noise_stddev=1.0,
        discrete_fraction=0.5,
        gate_bias_init=3.0,
        gate_bias_spread=1.0,
        gate_rescale="sigmoid",
        cost_floor=0.0,
        gate_gradient="all",
        seed=None,
        backbone_trainable=True,
        **kwargs,
    ):
        super().__init__(**kwargs)
        _checks.check_channels_last(data_format, self.name)
        self.filters = _checks.check_int_at_least("filters", filters, 1)
        if groups != 1:
            raise ValueError(
                f"Invalid value for argument `groups` of layer '{self.name}'. "
                f"SPMConv2D gates ungrouped convolutions only. Received: groups={groups!r}"
            )
        if tuple(_pair(dilation_rate)) != (1, 1):
            raise ValueError(
                f"Invalid value for argument `dilation_rate` of layer '{self.name}'. "
                "SPMConv2D supports dilation_rate=1 only. "
                f"Received: dilation_rate={dilation_rate!r}"
            )
        self.mode = _checks.check_mode(mode)
        self.cost_floor = _checks.check_float_in("cost_floor", cost_floor, 0.0, 1.0,
                                                 low_open=False)
        if gate_gradient not in GATE_GRADIENTS:
            raise ValueError(
                f"Invalid value for argument `gate_gradient` of layer '{self.name}'. "
                f"Expected one of {GATE_GRADIENTS}. Received: gate_gradient={gate_gradient!r}"
            )
        self.gate_gradient = gate_gradient
        self.use_batch_norm = bool(use_batch_norm)
        self.activation = keras.activations.get(activation)
        self.conv = keras.layers.Conv2D(
            filters,
            kernel_size,
            strides=strides,
            padding=padding,
            use_bias=use_bias,
            kernel_initializer=kernel_initializer,
            bias_initializer=bias_initializer,
            kernel_regularizer=kernel_regularizer,
            bias_regularizer=bias_regularizer,
            kernel_constraint=kernel_constraint,
            bias_constraint=bias_constraint,
            name="conv",
        )
        self.bn = _batch_norm.make(
            self.use_batch_norm, bn_momentum, bn_epsilon, bn_center, bn_scale
        )
        self.gate = SaliencyGate(
            filters,
            reduction=reduction,
            min_hidden=min_hidden,
            mode=mode,
            keep_ratio=keep_ratio,
            noise_stddev=noise_stddev,
            discrete_fraction=discrete_fraction,
            bias_init=gate_bias_init,
            bias_spread=gate_bias_spread,
            rescale=gate_rescale,
            seed=seed,
            dtype=_gate_dtype(self.dtype_policy),
            name="gate",
        )

        self.backbone_trainable = backbone_trainable

    @property
    def backbone_trainable(self):
        """Whether the convolution and batch norm train (False: only the gate does)."""
        return self.conv.trainable

    @backbone_trainable.setter
    def backbone_trainable(self, value):
        _batch_norm.set_trainable(self.conv, self.bn, value)

    @property
    def kernel_size(self):
        return self.conv.kernel_size

    @property
    def strides(self):
        return self.conv.strides

    @property
    def padding(self):
        return self.conv.padding

    @property
    def gates_cost(self):
        """Whether the cost loss acts on this layer's decisions (sanp and static)."""
        return self.mode in ("sanp", "static")

    def build(self, input_shape):
        _checks.check_image_shape(input_shape, self.name)
        self.conv.build(input_shape)
        output_shape = self.conv.compute_output_shape(input_shape)
        if self.bn is not None:
            self.bn.build(output_shape)
        self.gate.build(input_shape)
        self.cost_weight = self.add_weight(
            name="cost_weight", shape=(), initializer="zeros", trainable=False
        )
        self.cost_gain = self.add_weight(
            name="cost_gain", shape=(), initializer="ones", trainable=False
        )
        self.active_rate = self.add_weight(
            name="active_rate",
            shape=(self.filters,),
            initializer="ones",
            trainable=False,
            aggregation="mean",  # under a distribution strategy: every replica's batch
        )

    def call(self, inputs, training=None, return_decisions=False):
        y = self.conv(inputs)  # (B, H, W, C_out)
        if self.bn is not None:
            y = self.bn(y, training=training)
        if self.mode == "dense":
            decisions = ops.ones((ops.shape(y)[0], self.filters), dtype=y.dtype)
        else:
            gate_inputs = inputs
            if self.gate_gradient == "none":
                gate_inputs = ops.stop_gradient(inputs)
            scores, decisions = self.gate(gate_inputs, training=training)  # (B, C_out) x2
            saliency = self.gate.scale(scores)  # (B, C_out), g' in METHOD.md
            y = y * ops.cast(decisions * saliency, y.dtype)[:, None, None, :]
            decisions = ops.cast(decisions, y.dtype)
            if training:
                if self.gates_cost:
                    cost_scores = scores
                    if self.gate_gradient == "task":
                        # The same scores, but the cost's gradient stops at the gate.
                        cost_scores = self.gate.saliency(ops.cast(
                            ops.stop_gradient(inputs), self.gate.compute_dtype))
                    activity = _soft_activity(cost_scores, self.cost_gain,
                                              self._spared())  # (C_out,)
                    self.add_loss(self.cost_weight * ops.sum(activity))
                hard = self.gate.hard_decisions(scores)
                self.active_rate.assign(ops.cast(ops.mean(hard, axis=0), "float32"))
        y = self.activation(y)
        if return_decisions:
            return y, decisions
        return y

    def _spared(self):
        """Channels of highest mean score the cost loss leaves alone (`cost_floor`)."""
        return math.ceil(self.cost_floor * self.filters - 1e-9)

    def compute_output_shape(self, input_shape):
        return self.conv.compute_output_shape(input_shape)

    def compute_output_spec(self, inputs, training=None, return_decisions=False):
        y = keras.KerasTensor(
            self.compute_output_shape(inputs.shape), dtype=self.compute_dtype
        )
        if return_decisions:
            b = keras.KerasTensor((inputs.shape[0], self.filters), dtype=self.compute_dtype)
            return y, b
        return y

    def get_config(self):
        config = super().get_config()
        conv = self.conv.get_config()
        for key in (
            "kernel_size",
            "strides",
            "padding",
            "use_bias",
            "kernel_initializer",
            "bias_initializer",
            "kernel_regularizer",
            "bias_regularizer",
            "kernel_constraint",
            "bias_constraint",
        ):
            config[key] = conv[key]
        gate = self.gate.get_config()
        for key in (
            "reduction",
            "min_hidden",
            "keep_ratio",
            "noise_stddev",
            "discrete_fraction",
            "seed",
        ):
            config[key] = gate[key]
        config.update(
            {
                "filters": self.filters,
                "activation": keras.activations.serialize(self.activation),
                "mode": self.mode,
                "backbone_trainable": self.backbone_trainable,
                "gate_bias_init": gate["bias_init"],
                "gate_bias_spread": gate["bias_spread"],
                "gate_rescale": gate["rescale"],
                "cost_floor": self.cost_floor,
                "gate_gradient": self.gate_gradient,
            }
        )
        config.update(_batch_norm.config(self.bn))
        return config


def _gate_dtype(policy):
    """The gate computes in float32 under a mixed policy: its scores, the straight-through
    estimators and the cost loss need float32's range and precision, and they cost
    next to nothing beside the convolution."""
    if policy.compute_dtype in ("float16", "bfloat16"):
        return "float32"
    return policy


def _soft_activity(scores, gain, spared=0):
    """Per-channel cost term of paper eq. 9, `(C_out,)`.

    Its value is `mean_i sigmoid(g[i, c])`, the L1 norm of the non-negative saliency;
    its gradient with respect to `g[i, c]` is `gain / batch` (straight-through), not
    `sigmoid'(g)`, which vanishes for saturated gates: lambda must be able to reopen a
    channel closed far below zero, and close one far above, as fast as an undecided one.
    The `spared` channels of highest `mean_i g[i, c]` get no gradient from it.
    """
    soft = ops.mean(ops.sigmoid(scores), axis=0)
    linear = ops.mean(scores, axis=0)  # (C_out,)
    push = gain * (linear - ops.stop_gradient(linear))
    if spared:
        kth = ops.top_k(ops.stop_gradient(linear), spared, sorted=True)[0][-1]
        push = push * ops.cast(ops.less(linear, kth), push.dtype)
    return ops.stop_gradient(soft) + push


def _pair(value):
    if isinstance(value, int):
        return (value, value)
    return tuple(value)
