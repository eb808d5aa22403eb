"""BudgetCallback: the lambda controller that holds a gated model to a MACs budget."""

import collections

import keras
import numpy as np

from sanp_keras import flops
from sanp_keras.layers import _checks

WEIGHTINGS = ("macs", "uniform")
ALLOCATIONS = ("global", "layer")
INTEGRAL_BAND = 0.1  # the integral term accumulates only while |e| is below this


class BudgetCallback(keras.callbacks.Callback):
    """Adjusts the weight of the cost loss so that the mean cost meets a budget.

    Paper eq. 9-10 (METHOD.md section 4). Every SPMConv2D in `"sanp"` or `"static"`
    mode adds `cost_weight * sum_c mean_i sigmoid(g[i, c])` to the model's losses; this
    callback sets those weights to `lambda * w_l` after every batch, with

        C_hat  = mean of the last `window` cost estimates, each computed from the
                 decisions the gates would take at inference on the training batch,
                 times a calibration factor (below)
        e      = (C_hat - B) / C                  B: budget, C: dense cost
        I      = clip(I + integral_gain * e, -1, 1)     only while |e| < 0.1
        lambda = alpha * clip(e + I, -1, 1)       in [-alpha, alpha], as in the paper

    With `ramp_steps > 0` the target `B` itself descends from the dense cost to the
    budget over the first `ramp_steps` batches, along Zhu & Gupta's (2017, "To prune,
    or not to prune", eq. 1) cubic schedule:

        B_t = B + (C - B) * (1 - min(1, t / ramp_steps))^3

    so that the network loses its channels gradually (fast at first, while many are
    redundant, slowly near the budget) instead of all within the first epoch.

    `allocation="layer"` (beyond the paper) gives every controlled layer a controller
    of its own instead: with `k` the keep ratio that makes the model cost the budget
    when every layer keeps that fraction of its channels (FIXED-K's k, from
    `flops.expected_macs`) and `r_l` layer l's open fraction on the last `window`
    training batches,

        e_l = r_l - (k - O),   I_l = clip(I_l + integral_gain * e_l, -1, 1)  (|e_l| < 0.1),
        lambda_l = alpha * clip(e_l + I_l, -1, 1),   cost weight lambda_l / N
        O = clip(O + integral_gain * e, -1, 1)   while the mean |e_l| < 0.1

    so each layer keeps about `k` of its channels on average, as FIXED-K does, while its
    gates still choose which, and how many, per sample. The slow outer term `O` moves
    all the layers' targets together by what the global (calibrated) gap `e` asks: the
    open fractions of successive layers are not independent across samples, so `k`
    alone misses the budget by some points. Global lambda lets the layers
    whose classification gradient resists least (a residual branch alone is cheap to
    lose) close first, down to empty layers; the per-layer target forbids that. The
    global estimate is still computed, logged and calibrated, and the recipe's landing
    moves the cost onto the budget afterwards.

    `integral_gain=0` gives the paper's linear controller exactly. A proportional
    controller settles where lambda balances the classification loss, which is a
    non-zero gap; the integral term removes that gap so the trained model lands on
    the budget.

    `weighting="macs"` (default) gives layer l the weight `w_l = share_l / C_out_l`,
    where `share_l` is its fraction of the dense MACs, so that the cost loss is a soft
    estimate of the cost ratio and closing a channel of an expensive layer is worth
    more. `weighting="uniform"` is the paper's `1 / N` for all N gated filters (the
    paper's extra `1 / L` is folded into `alpha`). Either way the weights sum to one
    over the channels, so the loss's value is `lambda` times a ratio in [0, 1] and the
    per-channel weight shrinks as the network grows. The gradient is therefore scaled
    apart from the value (`cost_gain = gate_speed * N`): the push a channel's score
    receives averages `gate_speed * lambda` per step whatever the network's size.

    Calibration. In training, a gate sees features gated noisily upstream and
    normalized with batch statistics, so the decisions it would take differ somewhat
    from those it takes at inference. Given `calibration_data` (a few hundred training
    images), every `calibrate_every` batches the callback measures the exact inference
    cost on them and rescales the training estimate by `inference / training`, so that
    the cost that lands on the budget is the one `sanp_keras.flops.measure` reports.
    Without it the factor is 1.

    `lambda` and `flops_ratio` (C_hat / C) are written into `logs` at each batch and
    epoch end, so History, CSVLogger and TensorBoard record them: place this callback
    before those in the `callbacks` list. Lambda lives in the layers' `cost_weight`
    variables, so it is saved with the model and restored when training resumes.

    Hand-written training loops call `set_model(model)` and `on_train_begin()` once,
    add `sum(model.losses)` to the loss, and call `on_train_batch_end(step)` after each
    optimizer step.

    Args:
        budget: target mean cost as a fraction of the dense cost, in (0, 1].
        budget_mmacs: target mean cost in millions of MACs (the paper's MFLOPs);
            give exactly one of `budget` and `budget_mmacs`.
        alpha: bound and gain of lambda.
        integral_gain: gain of the integral term (0: the paper's controller).
        window: number of batch estimates averaged into C_hat.
        weighting: `"macs"` or `"uniform"`, see above.
        include_bias: count the paper's "+1" per output (see `sanp_keras.flops`).
        gate_speed: mean gradient of the cost loss per gate score, per unit of
            lambda (see above).
        calibration_data: optional array of images `(N, H, W, C)` (or a dataset of
            batches) on which the inference cost is measured, see above.
        calibrate_every: batches between two calibrations.
        ramp_steps: batches over which the target descends to the budget (0: the
            budget from the first batch, the paper's controller).
        allocation: `"global"` (one lambda, the paper) or `"layer"` (one controller
            per layer around FIXED-K's keep ratio), see above.

    Example:

    >>> model = sanp_keras.models.create_model("resnet20")
    >>> model.compile("sgd", keras.losses.SparseCategoricalCrossentropy(True))
    >>> model.fit(ds, epochs=10, callbacks=[sanp_keras.BudgetCallback(budget=0.5)])
    """

    def __init__(
        self,
        budget=None,
        budget_mmacs=None,
        alpha=1.0,
        integral_gain=0.03,
        window=5,
        weighting="macs",
        include_bias=False,
        gate_speed=0.02,
        calibration_data=None,
        calibrate_every=25,
        ramp_steps=0,
        allocation="global",
    ):
        super().__init__()
        if (budget is None) == (budget_mmacs is None):
            raise ValueError(
                "Give exactly one of `budget` (a fraction of the dense cost) and "
                f"`budget_mmacs`. Received: budget={budget!r}, budget_mmacs={budget_mmacs!r}"
            )
        if budget is not None:
            budget = _checks.check_float_in("budget", budget, 0.0, 1.0)
        else:
            budget_mmacs = _checks.check_float_in(
                "budget_mmacs", budget_mmacs, 0.0, float("inf"), high_open=True
            )
        if weighting not in WEIGHTINGS:
            raise ValueError(
                f"Invalid value for argument `weighting`. Expected one of {WEIGHTINGS}. "
                f"Received: weighting={weighting!r}"
            )
        if allocation not in ALLOCATIONS:
            raise ValueError(
                f"Invalid value for argument `allocation`. Expected one of {ALLOCATIONS}. "
                f"Received: allocation={allocation!r}"
            )
        self.allocation = allocation
        self.budget = budget
        self.budget_mmacs = budget_mmacs
        self.alpha = _checks.check_float_in("alpha", alpha, 0.0, float("inf"), high_open=True)
        self.integral_gain = _checks.check_float_in(
            "integral_gain", integral_gain, 0.0, float("inf"), low_open=False, high_open=True
        )
        self.window = _checks.check_int_at_least("window", window, 1)
        self.weighting = weighting
        self.include_bias = include_bias
        self.gate_speed = _checks.check_float_in(
            "gate_speed", gate_speed, 0.0, float("inf"), high_open=True
        )
        self.calibration_data = calibration_data
        self.calibrate_every = _checks.check_int_at_least("calibrate_every", calibrate_every, 1)
        self.ramp_steps = _checks.check_int_at_least("ramp_steps", ramp_steps, 0)
        self.calibration = 1.0
        self._steps = 0
        self.lambda_ = 0.0
        self.integral = 0.0
        self.flops_ratio = None
        self._estimates = collections.deque(maxlen=self.window)
        self._layer_rates = collections.deque(maxlen=self.window)  # (layers,) each
        self.layer_lambdas = None  # allocation="layer": {layer name: lambda_l}
        self.layer_integrals = None
        self.keep_target = None
        self.keep_offset = 0.0  # O above
        self._nodes = None

    def set_model(self, model):
        super().set_model(model)
        self._nodes = None
        self._mean_macs = None

    def _setup(self):
        model = self.model
        self._nodes = flops.trace(model)
        self._gated = [g for g in flops.gated_layers(model) if g.mode != "dense"]
        self._controlled = [g for g in self._gated if g.gates_cost]
        if not self._gated:
            raise ValueError(
                f"BudgetCallback: model '{model.name}' has no gated layer (SPMConv2D "
                "with mode other than 'dense'). Convert it first: "
                "sanp_keras.convert(model)."
            )
        self.dense_macs = float(sum(n.dense_macs(self.include_bias) for n in self._nodes))
        if self.budget is not None:
            self.budget_macs = self.budget * self.dense_macs
        else:
            self.budget_macs = self.budget_mmacs * 1e6
            if self.budget_macs > self.dense_macs:
                raise ValueError(
                    "Invalid value for argument `budget_mmacs`: above the dense cost "
                    f"of model '{model.name}' ({self.dense_macs / 1e6:.1f} M). "
                    f"Received: budget_mmacs={self.budget_mmacs}"
                )
        layer_macs = {n.name: n.dense_macs(self.include_bias) for n in self._nodes}
        total_filters = sum(g.filters for g in self._controlled)
        self._weights = {}
        for g in self._controlled:
            if self.weighting == "macs" and self.allocation == "global":
                self._weights[g.name] = layer_macs[g.name] / self.dense_macs / g.filters
            else:
                self._weights[g.name] = 1.0 / total_filters
        if self.allocation == "layer":
            self.keep_target = self._uniform_keep_ratio()
            # Resume: each layer carries lambda_l * w from the last run.
            self.layer_lambdas = {g.name: float(g.cost_weight.numpy()) / self._weights[g.name]
                                  for g in self._controlled}
            self.layer_integrals = {name: float(np.clip(lam / self.alpha, -1.0, 1.0))
                                    for name, lam in self.layer_lambdas.items()}
        # Resume: the layers carry lambda * w from the last run.
        if self._controlled:
            first = self._controlled[0]
            self.lambda_ = float(first.cost_weight.numpy()) / self._weights[first.name]
            self.integral = float(np.clip(self.lambda_ / self.alpha, -1.0, 1.0))

    def _uniform_keep_ratio(self):
        """FIXED-K's k: the open fraction of every gated layer that costs the budget."""
        def cost(ratio):
            rates = {g.name: np.full(g.filters, ratio) for g in self._gated}
            return flops.expected_macs(self._nodes, rates, self.include_bias)

        low, high = 0.0, 1.0
        for _ in range(40):
            mid = (low + high) / 2
            low, high = (mid, high) if cost(mid) < self.budget_macs else (low, mid)
        return (low + high) / 2

    def get_state(self):
        """The controller's state, JSON-serializable, for resuming (lambda itself also
        lives in the layers)."""
        state = {
            "lambda": self.lambda_,
            "integral": self.integral,
            "calibration": self.calibration,
            "estimates": [float(e) for e in self._estimates],
            "steps": self._steps,
        }
        if self.layer_lambdas is not None:
            state["layer_lambdas"] = dict(self.layer_lambdas)
            state["layer_integrals"] = dict(self.layer_integrals)
            state["layer_rates"] = [list(map(float, r)) for r in self._layer_rates]
            state["keep_offset"] = self.keep_offset
        return state

    def set_state(self, state):
        """Restores `get_state()`; takes effect at the next `on_train_begin`."""
        self._pending_state = dict(state)

    def on_train_begin(self, logs=None):
        self._setup()
        state = getattr(self, "_pending_state", None)
        if state:
            self.lambda_ = float(state["lambda"])
            self.integral = float(state["integral"])
            self.calibration = float(state["calibration"])
            self._estimates.extend(state["estimates"])
            self._steps = int(state["steps"])
            if self.layer_lambdas is not None and "layer_lambdas" in state:
                self.layer_lambdas.update(state["layer_lambdas"])
                self.layer_integrals.update(state["layer_integrals"])
                self._layer_rates.extend(np.asarray(r) for r in state["layer_rates"])
                self.keep_offset = float(state["keep_offset"])
            self._pending_state = None
        self._assign()

    def _assign(self):
        gain = self.gate_speed * sum(g.filters for g in self._controlled)
        for g in self._controlled:
            lam = self.lambda_ if self.layer_lambdas is None else self.layer_lambdas[g.name]
            g.cost_weight.assign(lam * self._weights[g.name])
            g.cost_gain.assign(gain)

    def estimate_macs(self):
        """Mean MACs per sample estimated from the gates' last training batch."""
        rates = {g.name: g.active_rate.numpy() for g in self._gated}
        return flops.expected_macs(self._nodes, rates, self.include_bias)

    def inference_macs(self):
        """Exact mean inference MACs per sample on `calibration_data`."""
        if self._mean_macs is None:
            self._mean_macs = flops.mean_macs_function(self.model, self.include_bias)
        return self._mean_macs(self.calibration_data)

    def on_train_batch_end(self, batch, logs=None):
        if self._nodes is None:
            self._setup()
        self._estimates.append(self.estimate_macs())
        self._steps += 1
        if self.calibration_data is not None and self._steps % self.calibrate_every == 0:
            self.calibration = self.inference_macs() / float(np.mean(self._estimates))
        c_hat = self.calibration * float(np.mean(self._estimates))
        gap = (c_hat - self.target_macs()) / self.dense_macs
        if abs(gap) < INTEGRAL_BAND:  # no wind-up while far from the budget
            self.integral = float(np.clip(self.integral + self.integral_gain * gap, -1, 1))
        self.lambda_ = self.alpha * float(np.clip(gap + self.integral, -1.0, 1.0))
        self.flops_ratio = c_hat / self.dense_macs
        if self.layer_lambdas is not None:
            self._control_layers(gap)
        self._assign()
        self._write(logs)

    def _control_layers(self, global_gap):
        """allocation="layer": each layer's lambda from its open fraction's gap to
        its target `k - O`; `O` from the global gap once the layers have settled."""
        self._layer_rates.append(np.array([float(np.mean(g.active_rate.numpy()))
                                           for g in self._controlled]))
        rates = np.mean(self._layer_rates, axis=0)  # (layers,)
        target = float(np.clip(self.keep_target - self.keep_offset, 0.0, 1.0))
        if np.mean(np.abs(rates - target)) < INTEGRAL_BAND:
            self.keep_offset = float(np.clip(
                self.keep_offset + self.integral_gain * global_gap, -1, 1))
        for g, rate in zip(self._controlled, rates):
            gap = float(rate) - target
            if abs(gap) < INTEGRAL_BAND:
                self.layer_integrals[g.name] = float(np.clip(
                    self.layer_integrals[g.name] + self.integral_gain * gap, -1, 1))
            self.layer_lambdas[g.name] = self.alpha * float(
                np.clip(gap + self.layer_integrals[g.name], -1.0, 1.0))

    def target_macs(self):
        """The target of the current batch: the budget, or on the ramp towards it."""
        if not self.ramp_steps:
            return self.budget_macs
        left = 1.0 - min(1.0, self._steps / self.ramp_steps)
        return self.budget_macs + (self.dense_macs - self.budget_macs) * left**3

    def on_epoch_end(self, epoch, logs=None):
        self._write(logs)

    def _write(self, logs):
        if logs is not None and self.flops_ratio is not None:
            logs["lambda"] = self.lambda_
            logs["flops_ratio"] = self.flops_ratio
            if self.ramp_steps:
                logs["target_ratio"] = self.target_macs() / self.dense_macs
