"""The training recipe's building blocks: resumable stages and atomic checkpoints.

A stage is one `model.fit` (train the backbone, warm up the gates, fine-tune to the
budget). Each epoch ends with an atomic checkpoint: the model (with its optimizer
state) is written to `ckpt-<epoch>.keras` through a temporary file and `os.replace`,
then `state.json` (completed epochs, the budget controller's state, the checkpoint's
name) the same way, and only then the previous checkpoint is deleted. A process killed
at any moment leaves a `state.json` that names a complete checkpoint; running the same
stage again resumes after the last finished epoch. A loss that turns NaN or infinite
stops the stage at once, and that epoch is never checkpointed: the last good one stays.
"""

import json
import os

import keras
import numpy as np

from sanp_keras import flops
from sanp_keras import graph
from sanp_keras.layers import _checks
from sanp_keras.layers.gated_depthwise_conv2d import GatedDepthwiseConv2D
from sanp_keras.layers.spm_conv2d import SPMConv2D

STATE_FILE = "state.json"


def write_json_atomic(path, data):
    """Writes JSON to `path` through a temporary file and `os.replace`."""
    tmp = f"{path}.tmp"
    with open(tmp, "w") as f:
        json.dump(data, f, indent=2)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def read_state(stage_dir):
    """The stage's `state.json` as a dict, or None if the stage has not started."""
    path = os.path.join(stage_dir, STATE_FILE)
    if not os.path.exists(path):
        return None
    with open(path) as f:
        return json.load(f)


class AtomicCheckpoint(keras.callbacks.Callback):
    """Saves the model and the training state after every epoch, atomically.

    Args:
        stage_dir: folder of the stage.
        budget: an optional `BudgetCallback` whose state is saved alongside.
    """

    def __init__(self, stage_dir, budget=None):
        super().__init__()
        self.stage_dir = stage_dir
        self.budget = budget

    def on_epoch_end(self, epoch, logs=None):
        if not np.isfinite((logs or {}).get("loss", 0.0)):
            print(f"[{os.path.basename(self.stage_dir)}] epoch {epoch + 1}: loss "
                  f"{logs['loss']}, not checkpointed.")
            return
        os.makedirs(self.stage_dir, exist_ok=True)
        previous = read_state(self.stage_dir)
        name = f"ckpt-{epoch + 1}.keras"
        path = os.path.join(self.stage_dir, name)
        tmp = os.path.join(self.stage_dir, f"tmp-{name}")
        self.model.save(tmp)
        os.replace(tmp, path)
        state = {
            "epoch": epoch + 1,
            "checkpoint": name,
            "logs": {k: float(v) for k, v in (logs or {}).items()},
        }
        if self.budget is not None:
            state["budget"] = self.budget.get_state()
        write_json_atomic(os.path.join(self.stage_dir, STATE_FILE), state)
        if previous and previous["checkpoint"] != name:
            old = os.path.join(self.stage_dir, previous["checkpoint"])
            if os.path.exists(old):
                os.remove(old)


def fit_stage(stage_dir, build, compile_model, train_ds, epochs, val_ds=None,
              budget=None, verbose="auto"):
    """Runs (or resumes, or skips) one training stage.

    Args:
        stage_dir: folder holding the stage's checkpoints and logs.
        build: `() -> keras.Model`, the model to start the stage from.
        compile_model: `(model) -> None`, compiles it (optimizer, loss, metrics).
        train_ds, val_ds: datasets of `(image, label)` batches.
        epochs: total epochs of the stage.
        budget: an optional `BudgetCallback`.
        verbose: passed to `fit` (progress bars).

    Returns:
        The model at the end of the stage.

    Raises:
        FloatingPointError: the loss became NaN or infinite (the stage stops at that
            step; its last finished epoch stays checkpointed).
    """
    state = read_state(stage_dir)
    if state is not None:
        model = keras.models.load_model(os.path.join(stage_dir, state["checkpoint"]))
        initial_epoch = state["epoch"]
        if budget is not None and "budget" in state:
            budget.set_state(state["budget"])
        if initial_epoch >= epochs:
            print(f"[{os.path.basename(stage_dir)}] done ({initial_epoch} epochs), skipping.")
            return model
        print(f"[{os.path.basename(stage_dir)}] resuming after epoch {initial_epoch}.")
        if getattr(model, "optimizer", None) is None:  # a `snapshot_stage` resume point
            compile_model(model)
            steps = int(train_ds.cardinality())
            if steps < 0:
                raise ValueError(f"Resuming {stage_dir} from a checkpoint without optimizer "
                                 "state needs a dataset of known length (its learning-rate "
                                 f"schedule restarts at step epoch * steps); got {steps}.")
            model.optimizer.iterations.assign(initial_epoch * steps)
            print(f"[{os.path.basename(stage_dir)}] the checkpoint has no optimizer state: "
                  f"a fresh optimizer starts at step {initial_epoch * steps} of its "
                  "schedule (the momentum restarts at zero).")
    else:
        model = build()
        compile_model(model)
        initial_epoch = 0
    callbacks = [] if budget is None else [budget]  # first: writes logs the others read
    callbacks += [
        keras.callbacks.TerminateOnNaN(),
        AtomicCheckpoint(stage_dir, budget),
        keras.callbacks.CSVLogger(os.path.join(stage_dir, "log.csv"), append=True),
        keras.callbacks.TensorBoard(os.path.join(stage_dir, "tensorboard")),
    ]
    history = model.fit(train_ds, validation_data=val_ds, epochs=epochs,
                        initial_epoch=initial_epoch, callbacks=callbacks, verbose=verbose,
                        shuffle=False)  # the dataset shuffles
    losses = history.history.get("loss", [])
    if losses and not np.isfinite(losses[-1]):
        state = read_state(stage_dir)
        kept = (f"its last good checkpoint, {state['checkpoint']} (epoch {state['epoch']}), "
                "is kept" if state else "no epoch of it finished")
        raise FloatingPointError(
            f"Stage '{os.path.basename(stage_dir)}' diverged: the loss became "
            f"{losses[-1]} in epoch {initial_epoch + len(losses)}; {kept}. Lower the "
            "learning rate or clip the gradients (the optimizer's `global_clipnorm`; "
            f"train_cifar.py --clipnorm=1), then remove {stage_dir} to start the stage "
            "afresh: a checkpoint resumes with the optimizer it was saved with.")
    return model


def snapshot_stage(stage_dir, dest_dir):
    """Copies a stage's last checkpoint to `dest_dir` without its optimizer state.

    The copy (`state.json` and `ckpt-<epoch>.keras`, about half the size of a checkpoint
    with the momentum) is small enough to commit; copied back as a stage folder, it
    resumes there on a fresh machine: `fit_stage` compiles it anew and starts the
    optimizer's schedule at the step the epoch ended on.

    Returns:
        The path of the copied checkpoint.
    """
    state = read_state(stage_dir)
    if state is None:
        raise ValueError(f"No finished epoch to snapshot in {stage_dir!r} (no {STATE_FILE}).")
    model = keras.models.load_model(os.path.join(stage_dir, state["checkpoint"]), compile=False)
    os.makedirs(dest_dir, exist_ok=True)
    path = os.path.join(dest_dir, state["checkpoint"])
    model.save(path)
    for name in os.listdir(dest_dir):  # one resume point per folder
        if name.startswith("ckpt-") and name != state["checkpoint"]:
            os.remove(os.path.join(dest_dir, name))
    write_json_atomic(os.path.join(dest_dir, STATE_FILE), state)
    return path


def set_backbone_trainable(model, trainable):
    """Freezes (or unfreezes) every weight but the gates', for the gate warm-up.

    Paper 4.1.2: "we warm up the SPMs using the classification loss, with fixed
    parameters of convolutional kernels". Frozen batch norms run in inference mode.
    """
    for layer in graph.as_functional(model).layers:
        if isinstance(layer, (SPMConv2D, GatedDepthwiseConv2D)):
            layer.backbone_trainable = trainable
        elif layer.weights:
            layer.trainable = trainable


def fixed_k_keep_ratio(model, budget, include_bias=False):
    """The keep ratio that makes a FIXED-K model cost `budget` of its dense MACs.

    Solved by bisection on `flops.expected_macs` with every gate keeping that fraction
    of its channels (exact for chains of gated layers, where every sample keeps k).
    """
    nodes = flops.trace(model)
    dense = sum(n.dense_macs(include_bias) for n in nodes)
    layers = [g for g in flops.gated_layers(model) if g.mode != "dense"]

    def cost(ratio):
        rates = {g.name: np.full(g.filters, ratio) for g in layers}
        return flops.expected_macs(nodes, rates, include_bias) / dense

    low, high = 0.0, 1.0
    for _ in range(40):
        mid = (low + high) / 2
        low, high = (mid, high) if cost(mid) < budget else (low, mid)
    return (low + high) / 2


def _top_k_cost(model, layers, images):
    """The measured cost of `model` on `images` with every top-k gate of `layers` keeping
    its k channels: an FBS channel among the top k also needs a score over zero (its
    saliency is a ReLU), which a fresh or short-trained gate may miss for a few channels
    that the fine-tune then opens (FBS at 0.5 measured 0.500 after its warm-up, 0.502
    after the fine-tune); counted as open anyway (`SaliencyGate.every_top_k`, set for
    this measurement only), the cost is the most those k can cost."""
    fbs = [layer.gate for layer in layers if layer.mode == "fbs"]
    for gate in fbs:
        gate.every_top_k = True
    try:
        return flops.measure(model, images)["flops_ratio"]
    finally:
        for gate in fbs:
            gate.every_top_k = False


def _top_k_layers(model):
    layers = [g for g in flops.gated_layers(model) if g.mode in ("fixed_k", "fbs")]
    if not layers:
        raise ValueError(f"Model '{model.name}' has no fixed_k or fbs gates to calibrate.")
    return layers


def _top1(model, images, batch_size=250):
    """Top-1 labels of `model` on `images`, run eagerly (a top-k gate's k is a Python
    int that a traced predict function would keep)."""
    return np.concatenate([np.argmax(np.asarray(model(images[i:i + batch_size],
                                                      training=False)), axis=-1)
                           for i in range(0, len(images), batch_size)])


def land_keep_ratio(model, budget, images):
    """Lowers the k of top-k gates (`"fixed_k"`, `"fbs"`) one channel at a time until the
    cost on `images` (counted as `calibrate_keep_ratio` does) is at or under `budget`;
    returns `(cost before, cost after)`. Each step lowers the layer whose channel less
    changes the fewest top-1 labels on `images` against the model before the landing
    (labels not needed; ties: the first layer).

    The landing of a FIXED-K / FBS fine-tune (SANP's is `land_on_budget`): their k is
    fixed after the warm-up, but the channels the top k picks, and so what two gated
    paths share at a residual Add, move while training. Which layer gives the channel
    matters: FBS at 0.5 ended at 0.502 and went to 14.28 % top-1 error (from 13.34 %)
    when the layers with the most channels gave one each in turn, to 13.59 % (at 0.496)
    with this choice.
    """
    layers = _top_k_layers(model)
    before = cost = _top_k_cost(model, layers, images)
    reference = _top1(model, images) if cost > budget else None
    while cost > budget:
        best = None
        for layer in layers:
            gate = layer.gate
            if gate.k <= 1:
                continue
            kept = gate.keep_ratio
            gate.keep_ratio = (gate.k - 1) / gate.units
            changed = int(np.sum(_top1(model, images) != reference))
            gate.keep_ratio = kept
            if best is None or changed < best[0]:
                best = (changed, layer)
        if best is None:
            break  # every layer down to one channel
        gate = best[1].gate
        gate.keep_ratio = (gate.k - 1) / gate.units
        cost = _top_k_cost(model, layers, images)
    return before, cost


def calibrate_keep_ratio(model, budget, images, steps=10, fill=True):
    """Sets every top-k gate's keep ratio so the model's measured cost on `images` is
    the closest to `budget` at or under it (the closest above it only where no ratio
    tried is under); returns `(ratio, measured cost ratio)`. Whole channels make the
    cost a staircase: the nearest step can be a few thousandths over the budget, which
    a user who names a budget does not expect.

    One ratio shared by every layer moves in coarse steps (ResNet-20: a channel is
    1/16 of each first-stage layer, and all of them move at once): the nearest step
    under the budget can be 0.02 under it (FBS at 0.5 after its warm-up: 0.478). With
    `fill=True` the gap is then filled one channel at a time, the layers with the
    fewest channels (the largest steps) first: a layer keeps one channel more while
    the measured cost stays at or under `budget`, so that some layers keep `k + 1`
    (their `keep_ratio` is then above the returned `ratio`). `fill=False` keeps one
    ratio for every layer (FBS's and FIXED-K's papers). FBS's cost is counted with every
    one of its top k open (`_top_k_cost`), the most it can cost once trained.

    `fixed_k_keep_ratio` treats channels as independent, which is exact for chains but
    not where a residual Add joins two gated paths: trained gates open overlapping
    channels, the union is smaller than independence predicts and the model comes out
    cheaper than its budget. This bisects on the cost measured with the gates as they
    are (call it after the warm-up, before fine-tuning: `k` is fixed from then on).
    """
    layers = _top_k_layers(model)

    def cost(ratio):  # k is a Python int in the traced graph: measure afresh each time
        for layer in layers:
            layer.gate.keep_ratio = ratio
        return _top_k_cost(model, layers, images)

    def better(candidate, best):  # under the budget first, then the nearer
        return best is None or ((candidate[1] <= budget, -abs(candidate[1] - budget))
                                > (best[1] <= budget, -abs(best[1] - budget)))

    low, high = 0.0, 1.0
    best = None
    for _ in range(steps):
        mid = (low + high) / 2
        measured = cost(mid)
        if better((mid, measured), best):
            best = (mid, measured)
        low, high = (mid, high) if measured < budget else (low, mid)
    measured = cost(best[0])
    if not fill or measured > budget:
        return best[0], measured
    for layer in sorted(layers, key=lambda g: g.filters):  # the largest steps first
        gate = layer.gate
        while gate.k < gate.units:
            before = gate.keep_ratio
            gate.keep_ratio = (gate.k + 1) / gate.units  # one channel more, exactly
            more = _top_k_cost(model, layers, images)
            if more > budget:
                gate.keep_ratio = before
                break
            measured = more
    return best[0], measured


GATE_ORDERS = ("bn_scale", "random")


def order_gates(model, order="bn_scale"):
    """Ranks the starting scores `c2` of every `"sanp"`, `"static"`, `"fixed_k"` and
    `"fbs"` gate by its channel's batch-norm scale; returns the number of gates ranked.
    (FBS's bias `c` is drawn in `fbs_bias_init +- 0.1` and dealt out over that range.)

    Beyond the paper: a fresh gate's `c2` is drawn uniform in `bias_init +-
    bias_spread` (distinct, so that channels close one by one), an order that says
    nothing about the channels. Whatever closes channels first (the controller in the
    paper's recipe, `start_at_keep_ratio`, FIXED-K's top k) closes the lowest `c2`
    first, and a warm-up of a few hundred steps at a small learning rate moves them
    little: with the random draw, the channels closed first are random ones. With
    `order="bn_scale"` the same values are dealt out by `|gamma|` of the
    layer's batch norm (Network Slimming's channel importance, Liu et al. 2017):
    channel c gets `bias_init + bias_spread * (2 r_c - 1)`, `r_c` the rank of
    `|gamma_c|` in the layer scaled to [0, 1], so that the least important channels
    are the nearest to closing. Measured with the main job (`examples/train_cifar.py
    --export=none`, budget 0.5, the gates started at the budget): 20.4 % error on the
    sample's test images with this order, 24.2 % with `--gate_order=random`
    (bench/README.md). `order="random"` leaves the gates as drawn. Layers without a
    batch-norm scale are left as they are.
    """
    if order not in GATE_ORDERS:
        raise ValueError(f"Invalid value for argument `order`. Expected one of "
                         f"{GATE_ORDERS}. Received: order={order!r}")
    if order == "random":
        return 0
    ranked = 0
    for layer in flops.gated_layers(model):
        if layer.mode not in ("sanp", "static", "fixed_k", "fbs") or layer.bn is None \
                or layer.bn.gamma is None:
            continue
        gate = layer.gate
        importance = np.abs(np.asarray(layer.bn.gamma.numpy(), np.float64))  # (C_out,)
        rank = np.argsort(np.argsort(importance, kind="stable"), kind="stable")
        unit = rank / max(1, layer.filters - 1)  # (C_out,) in [0, 1]
        center, spread = ((gate.fbs_bias_init, 0.1) if layer.mode == "fbs"
                          else (gate.bias_init, gate.bias_spread))
        gate.excite_bias.assign((center + spread * (2.0 * unit - 1.0)).astype(np.float32))
        ranked += 1
    return ranked


def _close_under(bias, delta):
    """A gate's biases `c2` (units,) with the channels under `delta > 0` moved down by
    `delta`, just under the threshold, the others as they are; `delta <= 0`: every
    bias raised by `-delta` (the nearest to opening open first)."""
    return np.where((bias < delta) | (delta < 0), bias - delta, bias)


def _shiftable_gates(model, argument=None, names=None):
    """The `"sanp"` / `"static"` gated layers of `model` (those named in `names`, where
    given, checked against them: `argument` is the caller's argument they came in)."""
    layers = [g for g in flops.gated_layers(model) if g.mode in ("sanp", "static")]
    if not layers:
        raise ValueError(f"Model '{model.name}' has no sanp or static gates to shift.")
    if names is None:
        return layers
    unknown = sorted(set(names) - {g.name for g in layers})
    if unknown:
        raise ValueError(
            f"Invalid value for argument `{argument}`: {unknown} are not sanp or static "
            f"gated layers of model '{model.name}'. Expected names among "
            f"{[g.name for g in layers]}.")
    return [g for g in layers if g.name in set(names)]


def start_at_keep_ratio(model, keep_ratio, images, steps=16):
    """Closes, layer by layer, the lowest scoring channels of each `"sanp"` / `"static"`
    gate so that the layer keeps about `keep_ratio` of them on `images`; returns
    `{layer name: (delta_l, open fraction)}`.

    `keep_ratio` is one fraction for every such layer, or a dict `{layer name:
    fraction}`: each named layer keeps its own fraction (an allocation such as
    Network Slimming's, `slimming.allocation`), the layers it does not name are left
    as they are and are not in the result.

    Beyond the paper: a freshly converted gate keeps every channel open (`c2` around
    3), so in the paper's recipe the cost loss closes half the network during the
    first epochs of the fine-tune, down to empty layers, while the classification loss
    meets a network changing under it (the controller per epoch of
    `bench/results/sanp_ablation_10ep.md`: 0.69 0.30 0.31...). Called after the warm-up
    with FIXED-K's `k` (`fixed_k_keep_ratio`), this starts the fine-tune where FIXED-K
    starts: every layer at `k`, its lowest scoring channels closed, its kept channels
    unchanged; the gates still decide per sample (`1[g > 0]`, METHOD.md eq. 7) and the
    controller then moves channels between layers. Follow it with `land_on_budget` for
    the exact cost, which `k` misses where residual paths join.

    Layer l's channels whose bias `c2` lies under `delta_l` move down by `delta_l`, just
    under the threshold (closed, in their order, the nearest to reopening first); the
    others keep their bias. Shifting every channel instead would also rescale the kept
    ones, `sigmoid(g - delta_l)` in place of `sigmoid(g)` (SANP eq. 4): about 0.6
    in place of 0.95 in every layer, which a ResNet-20 did not survive (13 % training
    accuracy). A layer under `keep_ratio` as it stands gets `delta_l < 0`: all its
    scores move up, the nearest to opening first. The new bias is written into the
    gate's `excite_bias`, so the saved model and every export carry it. All layers are
    bisected together, `steps` passes over `images` (a layer's open fraction falls as
    its `delta_l` grows, given the layers above it, which settle as the bisection goes).
    """
    if isinstance(keep_ratio, dict):
        layers = _shiftable_gates(model, "keep_ratio", keep_ratio)
        ratios = {name: _checks.check_float_in(f"keep_ratio[{name!r}]", value, 0.0, 1.0)
                  for name, value in keep_ratio.items()}
    else:
        layers = _shiftable_gates(model)
        keep_ratio = _checks.check_float_in("keep_ratio", keep_ratio, 0.0, 1.0)
        ratios = {g.name: keep_ratio for g in layers}
    run = flops.decision_function(model)
    original = {g.name: np.array(g.gate.excite_bias.numpy()) for g in layers}
    low = {g.name: -16.0 for g in layers}  # delta_l: open fraction >= keep_ratio
    high = {g.name: 16.0 for g in layers}  # ... and <= keep_ratio

    def open_fractions(deltas):
        for g in layers:
            g.gate.excite_bias.assign(_close_under(original[g.name], deltas[g.name]))
        decisions, _ = flops.collect_decisions(model, images, run=run)
        return {g.name: float(np.mean(decisions[g.name])) for g in layers}

    for _ in range(steps):
        mid = {name: (low[name] + high[name]) / 2 for name in low}
        for name, fraction in open_fractions(mid).items():
            if fraction > ratios[name]:
                low[name] = mid[name]
            else:
                high[name] = mid[name]
    fractions = open_fractions(high)
    return {name: (high[name], fractions[name]) for name in high}


def land_on_budget(model, budget, images, tolerance=0.01, steps=20, layers=None):
    """Moves one global threshold of every `"sanp"` / `"static"` gate until the model's
    measured cost on `images` lies in `[budget - tolerance, budget]`.

    The controller (`BudgetCallback`) holds the cost to the budget while training, but
    a fine-tune can end while it still swings around it (a STATIC model ended a
    237-step fine-tune at 0.393 for a budget of 0.35), and the budget a user names is
    the cost they should get. A channel stays open where `g > 0` (METHOD.md eq. 7);
    this moves one global threshold `delta` over the gates' biases `c2`, written into
    the gates' `excite_bias` so that the saved model and every export carry it
    unchanged. `delta > 0` closes channels of a model over the budget: those whose
    `c2` lies under `delta` move down by `delta`, just under the threshold, the others
    keep their bias and so their scale `sigmoid(g)` (as `start_at_keep_ratio` closes
    them). Shifting every gate instead rescales every kept channel by `sigmoid(g -
    delta)`, harmless for the `+0.02` a fine-tune from an even start needs, ruinous
    where the open channels sit far over the threshold (after `--gate_start=slimming`
    on the main job the landing needed `+2.0`: 21 % top-1 error before it, 65 % after).
    `delta < 0` reopens the most nearly open channels of a model under `budget -
    tolerance`: every gate's `c2` moves up by `-delta`. `delta` is found by bisection
    on the exact inference cost. Like Network Slimming's global threshold, it is one
    number for the whole network, so the layers keep the balance training gave them.

    Reopening gives back little accuracy: a channel that was closed in training got
    almost no gradient (in a trial, a ResNet-20 SANP model at 0.325 of a 0.35 budget
    went from 58.7 % to 67.6 % top-1 error when a threshold of -0.75 brought it to
    0.348, after a short fine-tune). A model should reach its budget by training; this
    corrects the last swing of the controller.

    Args:
        model: a gated model.
        budget: the mean cost not to exceed, as a fraction of the dense MACs.
        images: array `(N, H, W, C)` (or a dataset of batches) to measure on: held-out
            training images, so that the test set stays unseen.
        tolerance: how far under `budget` the cost may land.
        steps: bisection steps.
        layers: names of the gated layers whose threshold moves (default: every
            `"sanp"` / `"static"` one): after a start on an allocation
            (`start_at_keep_ratio` with a dict) the layers it allocated, so that the
            landing keeps the others open.

    Returns:
        `(delta, cost before, cost after)`, costs as fractions of the dense MACs. With
        every channel open and the cost still under the band, the most open model.

    Raises:
        ValueError: no threshold brings the cost down to `budget` (a layer keeps at
            least one channel); the model is left unchanged.
    """
    budget = _checks.check_float_in("budget", budget, 0.0, 1.0)
    tolerance = _checks.check_float_in("tolerance", tolerance, 0.0, 1.0)
    gates = [g.gate for g in _shiftable_gates(model, "layers", layers)]
    mean_macs = flops.mean_macs_function(model)
    dense = flops.dense_macs(model)
    original = [np.array(g.excite_bias.numpy()) for g in gates]
    tried = {}  # delta -> measured cost

    def cost(delta):
        for gate, bias in zip(gates, original):
            gate.excite_bias.assign(_close_under(bias, delta))
        tried[delta] = mean_macs(images) / dense
        return tried[delta]

    before = cost(0.0)
    if budget - tolerance <= before <= budget:
        return 0.0, before, before
    # Bracket the band between `low` (cost over the budget) and `high` (at or under
    # it), then bisect: the cost falls as delta grows, every layer closing more.
    if before > budget:
        low, high = 0.0, 0.5
        while cost(high) > budget:
            if high >= 64:
                cost(0.0)  # the model as it came
                raise ValueError(
                    f"No threshold brings model '{model.name}' to budget={budget}: with "
                    f"a shift of {high} its cost is still {tried[high]:.3f} of dense (a "
                    "layer keeps at least one channel). The model is left unchanged."
                )
            low, high = high, 2 * high
    else:
        low, high = -0.5, 0.0
        while cost(low) <= budget:
            if low <= -64:  # every channel open, still under the band
                return low, before, tried[low]
            low, high = 2 * low, low
    for _ in range(steps):
        if tried[high] >= budget - tolerance:
            break
        mid = (low + high) / 2
        low, high = (mid, high) if cost(mid) > budget else (low, mid)
    return high, before, cost(high)
