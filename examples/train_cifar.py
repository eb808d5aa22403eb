"""
Title: Self-adaptive network pruning of a CIFAR classifier
Description: Train a backbone, gate every convolution, and prune it to a MACs budget.

This script runs the recipe of the SANP paper (section 4.1.2) end to end:

1. train the plain backbone (conv + batch norm), or load one with `--pretrained`;
2. convert every conv + batch norm into an `SPMConv2D` carrying the same weights;
3. warm up the saliency modules with the classification loss, convolutions frozen;
4. fine-tune everything with the cost loss, `BudgetCallback` holding the mean cost
   of the network to `--budget` (a fraction of the dense MACs); where a short
   schedule ends with the cost still over the budget, one global gate threshold
   brings it down (`--land_budget`, `training.land_on_budget`);

with two changes of ours that its defaults make (`bench/README.md`): the backbone
distils into stages 3 and 4 (`--distill=0.7`: the more accurate in every converged run
and on the main job), and the gates start the fine-tune at the budget, every layer at
the same keep ratio (`--gate_start=budget`; `slimming`, Network Slimming's allocation,
was the more accurate at 0.5 and diverged at 0.33). `--distill=0 --gate_start=open` is
the paper's recipe.

then it evaluates the model, writes a report (error, MACs, pruned %, the paper's
Figure 4) and exports it to TFLite / LiteRT (`--export`, default `portable`: builtin
ops only, for any stock runtime), checked against Keras on 200 test images.
`--mode` picks the method trained from that same backbone: `sanp`; the
paper's ablations `fixed_k` (the same fraction of every layer, per sample) and `static`
(one decision for all samples); the baselines `fbs` (Gao et al. 2019: k-winners-take-all
on a one-layer saliency), `slimming` (Liu et al. 2017: stage 3 trains with an L1 penalty
on the BN scales, one global threshold then removes channels, stage 4 fine-tunes the
smaller plain model) and `thin` (every layer uniformly narrower to the budget, trained
from scratch for all the epochs of the other stages together); `dense`: stage 1 only.
Every stage checkpoints each epoch atomically: run the same command again after an
interruption (even `kill -9`) and it resumes after the last finished epoch,
optimizer and lambda included.

With no flags it prunes the shipped ResNet-20 (`resnet20_cifar10`) to half its MACs on
the CIFAR-10 (JPEG) sample shipped with the package (5,000 images) in a few minutes on
2 CPU cores (the README gives its measured error and cost). On full CIFAR-10:

    python examples/train_cifar.py --dataset=cifar10 --data_dir=DIR \\
        --backbone_epochs=160 --warmup_epochs=5 --finetune_epochs=60 --budget=0.5

(`DIR` holding `cifar-10-python.tar.gz` or prepared tfds data; `--dataset` also takes a
folder `train/<class>/*.jpg`, `test/<class>/*.jpg`.)
"""

import os
import sys

from absl import app
from absl import flags
from absl import logging

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def _start_tensorflow_quietly():
    """Imports TensorFlow and probes its devices with the process's stderr closed.

    Its start-up lines (oneDNN, CUDA probing on a machine without a GPU) come before
    its log level applies and ask nothing of a user; a failed import still raises here.
    `SANP_STARTUP_LOGS=1` shows them.
    """
    if os.environ.get("SANP_STARTUP_LOGS") == "1":
        return
    sys.stderr.flush()
    saved, devnull = os.dup(2), os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 2)
    try:
        import tensorflow as tf

        tf.config.list_physical_devices()
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(devnull)


_start_tensorflow_quietly()

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

import sanp_keras as sk  # noqa: E402
from sanp_keras import datasets  # noqa: E402
from sanp_keras import export  # noqa: E402
from sanp_keras import report  # noqa: E402
from sanp_keras import slimming  # noqa: E402
from sanp_keras import thinning  # noqa: E402
from sanp_keras import training  # noqa: E402

"""
## Hyperparameters
"""

MODES = ["sanp", "fixed_k", "static", "fbs", "slimming", "thin", "dense"]

flags.DEFINE_string("backbone", "resnet20", f"One of {sk.models.list_models()}.")
flags.DEFINE_string("dataset", "embedded",
                    "embedded, cifar10, cifar100, or a folder train/<class>/, test/<class>/.")
flags.DEFINE_string("data_dir", None, "Folder with the official archive or tfds data.")
flags.DEFINE_bool("download", False, "Let tfds download the dataset if it is missing.")
flags.DEFINE_float("budget", 0.5, "Target mean MACs, as a fraction of the dense model's.")
flags.DEFINE_float("gate_speed", 0.03, "Push of the cost loss on the gates (BudgetCallback).")
flags.DEFINE_enum("cost_weighting", "macs", list(sk.callbacks.budget.WEIGHTINGS),
                  "sanp / static: weight of a channel in the cost loss: its share of the "
                  "dense MACs (macs) or 1/N for all N gated channels (uniform, the "
                  "paper's eq. 9); see BudgetCallback.")
flags.DEFINE_enum("allocation", "global", list(sk.callbacks.budget.ALLOCATIONS),
                  "sanp / static: one lambda for the whole network (global, the paper) "
                  "or one controller per layer holding each near FIXED-K's keep ratio "
                  "(layer); see BudgetCallback.")
flags.DEFINE_float("budget_ramp", 0.0,
                   "sanp / static: fraction of the fine-tune over which the controller's "
                   "target descends from dense to the budget (cubic, Zhu & Gupta 2017); "
                   "0: the budget from the first step (the paper).")
flags.DEFINE_bool("land_budget", True,
                  "sanp / static: after fine-tuning, raise one global gate threshold "
                  "until the cost on 512 training images is at most the budget.")
flags.DEFINE_float("slimming_l1", 1e-4, "Network Slimming: L1 weight on the BN scales.")
flags.DEFINE_enum("mode", "sanp", MODES,
                  "sanp; the paper's ablations fixed_k, static; the baselines fbs, slimming "
                  "(Network Slimming), thin (uniformly narrower, from scratch); dense: the "
                  "backbone alone.")
flags.DEFINE_string("pretrained", "shipped",
                    "The trained plain backbone to start from: a .keras file, a name of "
                    "sanp_keras.models.list_pretrained(), 'shipped' (the backbone shipped "
                    "for --backbone and 10-class 32x32 data, else stage 1 trains) or "
                    "'none' (stage 1 trains). --mode=dense and thin always train.")
flags.DEFINE_integer("backbone_epochs", 6, "Epochs of stage 1.")
flags.DEFINE_integer("warmup_epochs", 1, "Epochs of stage 3 (gates only).")
flags.DEFINE_integer("finetune_epochs", 6, "Epochs of stage 4 (everything, with budget).")
flags.DEFINE_float("backbone_lr", 0.1, "Peak learning rate of stage 1 (SGD, cosine).")
flags.DEFINE_float("warmup_lr", 0.01, "Learning rate of stage 3.")
flags.DEFINE_float("finetune_lr", 0.01, "Peak learning rate of stage 4 (cosine).")
flags.DEFINE_integer("batch_size", 128, "Batch size.")
flags.DEFINE_float("weight_decay", 5e-4,
                   "Decoupled weight decay of SGD (Keras: w -= lr * weight_decay * w each "
                   "step, outside the momentum). With momentum 0.9 it is about 10x weaker "
                   "than the same number as a coupled L2 term (PyTorch's SGD): 5e-3 here "
                   "matches the usual CIFAR 5e-4.")
flags.DEFINE_integer("lr_warmup_epochs", 0,
                     "Epochs of linear learning-rate warm-up (from 0) before the cosine "
                     "decay of stages 1 and 4 (and thin).")
flags.DEFINE_float("clipnorm", None,
                   "Clip every step's gradients to this global norm (all stages); try 1 "
                   "if a short run on few images diverges to NaN.")
flags.DEFINE_float("distill", 0.7,
                   "Gated modes and slimming: weight alpha of a distillation term from the "
                   "plain backbone in the warm-up and fine-tune losses (Hinton et al. 2015; "
                   "0: off, the paper's recipe).")
flags.DEFINE_float("distill_temperature", 4.0, "Temperature T of the distillation term.")
flags.DEFINE_float("gate_noise", 1.0,
                   "Standard deviation of ISH's training noise (sanp, static).")
flags.DEFINE_float("discrete_fraction", 0.5,
                   "Fraction of training samples whose forward pass uses ISH's binary code "
                   "(the rest use its continuous relaxation; the paper: one half).")
flags.DEFINE_enum("gate_rescale", "sigmoid", ["sigmoid", "none"],
                  "sanp, static, fixed_k: scale each kept channel by sigmoid(g) (the paper) "
                  "or leave it unscaled.")
flags.DEFINE_float("cost_floor", 0.0,
                   "sanp / static: fraction of every layer's channels (its highest scoring "
                   "ones) the cost loss never pushes to close, so that the controller "
                   "cannot empty a layer (0: the paper). Training only.")
flags.DEFINE_enum("gate_start", "budget", ["open", "budget", "slimming"],
                  "sanp / static: start the fine-tune at the budget evenly (budget, the "
                  "default: each layer's gates shifted to keep FIXED-K's k of its "
                  "channels, then one global threshold onto the budget, "
                  "training.start_at_keep_ratio), at the budget with Network Slimming's "
                  "allocation (slimming: the blocks' inner convs keep the channels over "
                  "one global |gamma| threshold of the backbone, the other layers open: "
                  "uneven, slimming.allocation; the most accurate at 0.5, diverged at "
                  "0.33; where Slimming cannot meet the budget, as 'budget') or with every "
                  "channel open (the paper), which a short run cannot close in time "
                  "(bench/README.md).")
flags.DEFINE_enum("gate_order", "bn_scale", list(training.GATE_ORDERS),
                  "sanp / static / fixed_k / fbs: the order of the gates' starting scores, which "
                  "decides the channels closed first: by each channel's batch-norm scale "
                  "(bn_scale, training.order_gates) or as drawn at random (random, the "
                  "paper leaves it open).")
flags.DEFINE_enum("gate_gradient", "all", ["all", "task", "none"],
                  "sanp / static: which losses reach the backbone through each gate's "
                  "input: all (the paper), task (the cost loss trains the gates alone) or "
                  "none (the gates read detached features).")
flags.DEFINE_integer("calibration_images", 1000,
                     "Gated modes: training images held out of the fine-tune (at most a "
                     "fifth of them); the controller measures the inference cost on 512 of "
                     "them and the landing on all of them, so the budget holds on unseen "
                     "images.")
flags.DEFINE_integer("train_subset", None, "Use only the first N training images.")
flags.DEFINE_integer("test_subset", None, "Use only the first N test images.")
flags.DEFINE_string("output_dir", "runs/default", "Checkpoints, logs and the report.")
flags.DEFINE_enum("export", "portable", ["portable", "masked", "kernels", "none"],
                  "Export the model to <output_dir>/model_<kind>.tflite (export_tflite; "
                  "examples/export_tflite.py for more options) and check it against Keras.")
flags.DEFINE_string("save_pretrained", None,
                    "Also write the trained model as shipped weights NAME.weights.h5 + "
                    "NAME.json into sanp_keras/pretrained/ (sanp_keras.models."
                    "save_pretrained), with this command and the measured error and cost.")
flags.DEFINE_integer("seed", 0, "Random seed.")

FLAGS = flags.FLAGS
LANDING_MARGIN = 0.002  # the landing aims this far under the budget, on held-out images
LANDING_BAND = 0.006  # ... and at most this much further under


"""
## The recipe
"""


def _compile(learning_rate, steps, epochs, cosine=True, clipnorm=None, weight_decay=5e-4,
             warmup_epochs=0, distillation=None):
    """Compiler of a stage: Nesterov momentum SGD with decoupled `weight_decay`, a
    linear warm-up over `warmup_epochs` then cosine decay to 0 at the stage's end,
    logits loss, gradients clipped to a global norm of `clipnorm` if given.
    `distillation`: `(alpha, temperature)` for a `DistillationLoss` on labels packed
    by `distillation.with_teacher`, or None."""

    def compile_model(model):
        lr = learning_rate
        if cosine:
            warmup = min(warmup_epochs, epochs - 1) * steps if warmup_epochs else 0
            lr = keras.optimizers.schedules.CosineDecay(
                0.0 if warmup else learning_rate, steps * epochs - warmup,
                warmup_target=learning_rate if warmup else None, warmup_steps=warmup)
        model.compile(
            keras.optimizers.SGD(lr, momentum=0.9, nesterov=True, weight_decay=weight_decay,
                                 global_clipnorm=clipnorm),
            loss,
            metrics=metrics,
        )

    loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    metrics = ["accuracy"]
    if distillation is not None:
        loss = sk.distillation.DistillationLoss(*distillation)
        metrics = [sk.distillation.PackedAccuracy()]
    return compile_model


def start_allocation(gated, plain, gate_start, budget, reference_macs=None):
    """Where the gates of `gated` (converted from `plain`) start the fine-tune.

    `gate_start="slimming"`: the fraction of each inner conv's channels Network
    Slimming keeps at `budget` (`slimming.allocation`), the other layers open and left
    out of the landing; where Slimming cannot meet the budget, or for "budget": the
    one fraction of every layer FIXED-K keeps (`training.fixed_k_keep_ratio`), all
    layers landed.

    Returns:
        `(ratios, landed, how)`: the keep ratio(s) for `training.start_at_keep_ratio`,
        the layers `training.land_on_budget` may move (None: all) and a description.
    """
    if gate_start == "slimming":
        try:
            ratios = slimming.allocation(plain, budget, reference_macs)
        except ValueError as error:  # a budget out of Slimming's reach
            print(f"No Network Slimming start: {error} Starting evenly (as "
                  "--gate_start=budget) instead.")
        else:
            how = "Network Slimming's allocation (" + ", ".join(
                f"{name.removesuffix('.conv')} {ratio:.2f}" for name, ratio in ratios.items()
            ) + "; the other layers open)"
            return ratios, list(ratios), how
    ratio = training.fixed_k_keep_ratio(gated, budget)
    return ratio, None, f"every layer keeps about {ratio:.3f} of its channels"


def run(backbone="resnet20", dataset="embedded", data_dir=None, download=False,
        budget=0.5, gate_speed=0.03, cost_weighting="macs", allocation="global",
        budget_ramp=0.0, land_budget=True, slimming_l1=1e-4, mode="sanp",
        pretrained="shipped", backbone_epochs=6, warmup_epochs=1, finetune_epochs=6,
        backbone_lr=0.1, warmup_lr=0.01, finetune_lr=0.01, batch_size=128, clipnorm=None,
        weight_decay=5e-4, lr_warmup_epochs=0, distill=0.7, distill_temperature=4.0,
        gate_noise=1.0, discrete_fraction=0.5, gate_rescale="sigmoid",
        cost_floor=0.0, gate_gradient="all", gate_start="budget", gate_order="bn_scale",
        calibration_images=1000,
        train_subset=None, test_subset=None, output_dir="runs/default", seed=0, verbose=None, command=None,
        export_kind="portable", save_pretrained=None):
    """Trains, prunes, evaluates and exports; returns the evaluation result (a dict)."""
    keras.utils.set_random_seed(seed)
    if verbose is None:  # progress bars in a terminal, one line per epoch in a log
        verbose = 1 if sys.stdout.isatty() else 2
    data = (dataset if isinstance(dataset, datasets.ImageData)
            else datasets.load(dataset, data_dir, download=download))
    data = data.subset(train_subset, test_subset, seed=seed)
    print(f"Training on {data.description}.")
    if isinstance(dataset, str) and dataset == "embedded":
        print("This is the small sample shipped with sanp_keras. For full CIFAR-10: "
              "--dataset=cifar10 --data_dir=DIR (see the script's docstring).")
    gated_mode = mode not in ("dense", "thin", "slimming")
    held_out = None
    if gated_mode:  # images the fine-tune never sees, for the controller and the landing
        count = min(calibration_images, len(data.train) // 5)
        data, held_out = data.hold_out(count, seed=seed)
        print(f"Holding out {count:,} training images to measure the cost on.")
    train = datasets.pipeline(data.train, batch_size, training=True, seed=seed)
    test = datasets.pipeline(data.test, batch_size, training=False)
    steps = int(np.ceil(len(data.train) / batch_size))
    os.makedirs(output_dir, exist_ok=True)

    def stage_dir(name):
        return os.path.join(output_dir, name)

    def compile_stage(learning_rate, epochs, cosine=True, teacher=False):
        return _compile(learning_rate, steps, epochs, cosine, clipnorm, weight_decay,
                        lr_warmup_epochs,
                        (distill, distill_temperature) if teacher and distill else None)

    def create_plain():
        return sk.models.create_model(backbone, data.num_classes, gated=False,
                                      input_shape=data.train.images.shape[1:])

    reference_macs = sk.flops.dense_macs(create_plain())
    landing = None
    if mode == "thin":
        # The same architecture uniformly narrower to the budget, trained from scratch
        # for as many epochs as the backbone and its fine-tuning together.
        width, ratio = thinning.width_for_budget(create_plain(), budget)
        epochs = backbone_epochs + warmup_epochs + finetune_epochs
        print(f"Thin dense: width {width:.3f} ({ratio:.3f} of the dense MACs), "
              f"{epochs} epochs from scratch.")
        model = training.fit_stage(
            stage_dir("1_thin"), lambda: thinning.uniform_width(create_plain(), width),
            compile_stage(backbone_lr, epochs), train, epochs, test, verbose=verbose)
    # 1. The plain backbone.
    elif mode != "dense" and (source := backbone_source(pretrained, backbone, data)):
        print(f"Starting from the trained backbone {source}.")
        model = (keras.models.load_model(source) if source.endswith(".keras")
                 else sk.models.pretrained(source))
    else:
        model = training.fit_stage(
            stage_dir("1_backbone"),
            create_plain,
            compile_stage(backbone_lr, backbone_epochs),
            train, backbone_epochs, test, verbose=verbose,
        )

    if distill and mode not in ("dense", "thin"):
        # The plain backbone teaches every later stage (its logits packed with labels).
        teacher = model
        train = sk.distillation.with_teacher(train, teacher)
        test_packed = sk.distillation.with_teacher(test, teacher)
        print(f"Distilling from the backbone: alpha={distill}, T={distill_temperature}.")
    else:
        test_packed = test
    if mode == "slimming":
        # Network Slimming: L1 on the BN scales, one global threshold, channels removed.
        plain = model
        model = training.fit_stage(stage_dir("2_sparsity"),
                                   lambda: slimming.with_bn_l1(plain, slimming_l1),
                                   compile_stage(finetune_lr, warmup_epochs, teacher=True),
                                   train, warmup_epochs, test_packed, verbose=verbose)
        slimmed, info = slimming.slim(model, budget, reference_macs)
        print(f"Network Slimming: threshold |gamma| > {info['threshold']:.4g} keeps "
              f"{info['flops_ratio']:.3f} of the dense MACs; channels kept: {info['kept']}")
        model = training.fit_stage(stage_dir("3_finetune"), lambda: slimmed,
                                   compile_stage(finetune_lr, finetune_epochs, teacher=True),
                                   train, finetune_epochs, test_packed, verbose=verbose)
    elif mode not in ("dense", "thin"):
        # 2. Gate every conv + BN. FIXED-K and FBS need the keep ratio meeting the budget.
        gate_options = {"seed": seed, "noise_stddev": gate_noise,
                        "discrete_fraction": discrete_fraction,
                        "gate_rescale": gate_rescale, "cost_floor": cost_floor,
                        "gate_gradient": gate_gradient}
        if mode in ("fixed_k", "fbs"):
            probe = sk.convert(model, mode=mode)
            gate_options["keep_ratio"] = training.fixed_k_keep_ratio(probe, budget)
            print(f"{mode} keeps {gate_options['keep_ratio']:.3f} of every layer's channels.")
        plain = model

        def gated():
            model = sk.convert(plain, mode=mode, **gate_options)
            training.order_gates(model, gate_order)
            training.set_backbone_trainable(model, False)
            return model

        # 3. Warm up the gates, convolutions frozen.
        model = training.fit_stage(stage_dir("2_warmup"), gated,
                                   compile_stage(warmup_lr, warmup_epochs, cosine=False,
                                                 teacher=True),
                                   train, warmup_epochs, test_packed, verbose=verbose)
        warm = model

        # The cost is measured on held-out training images: the controller's on 512
        # of them, FIXED-K's k and the landing on all of them.
        calibration = datasets.normalized(held_out)

        def unfrozen():
            training.set_backbone_trainable(warm, True)
            if mode in ("fixed_k", "fbs"):  # k fixed for good, from the warmed-up gates
                # at most LANDING_MARGIN under the budget: a margin for other images
                ratio, cost = training.calibrate_keep_ratio(warm, budget - LANDING_MARGIN,
                                                            calibration)
                more = sum(g.gate.keep_ratio > ratio for g in sk.flops.gated_layers(warm))
                print(f"{mode} keeps {ratio:.3f} of every layer's channels after warm-up, "
                      f"{more} layers one channel more (measured cost {cost:.3f} of "
                      "dense).")
            elif gate_start in ("budget", "slimming") and mode in ("sanp", "static"):
                ratios, landed, how = start_allocation(warm, plain, gate_start, budget,
                                                       reference_macs)
                training.start_at_keep_ratio(warm, ratios, calibration)
                shift, before, after = training.land_on_budget(
                    warm, budget - LANDING_MARGIN, calibration, tolerance=LANDING_BAND,
                    layers=landed)
                print(f"Starting at the budget, {how}: {before:.3f} of the dense MACs, "
                      f"then a threshold {shift:+.3f}: {after:.3f}, on the held-out images.")
            return warm

        # 4. Fine-tune everything to the budget.
        callback = sk.BudgetCallback(
            budget=budget, gate_speed=gate_speed, weighting=cost_weighting,
            allocation=allocation,
            calibration_data=calibration[:512],
            ramp_steps=int(round(budget_ramp * finetune_epochs * steps)))
        model = training.fit_stage(stage_dir("3_finetune"), unfrozen,
                                   compile_stage(finetune_lr, finetune_epochs, teacher=True),
                                   train, finetune_epochs, test_packed, budget=callback,
                                   verbose=verbose)
        if land_budget and mode in ("fixed_k", "fbs"):
            # The channels the top k picks move while training, and with them what two
            # gated paths share at a residual Add: one channel less in turn where the
            # cost on the held-out images ended over the budget less the margin.
            before, after = training.land_keep_ratio(model, budget - LANDING_MARGIN,
                                                     calibration)
            if after != before:
                landing = {"flops_ratio_before": before, "flops_ratio_after": after,
                           "images": len(calibration)}
            print(f"Landing on the budget: {before:.3f} -> {after:.3f} of the dense MACs "
                  f"on {len(calibration)} held-out training images (k lowered where "
                  "needed)." if after != before else f"Cost {before:.3f} of the dense MACs "
                  f"on {len(calibration)} held-out training images: on the budget, as "
                  "trained.")
        if land_budget and mode in ("sanp", "static"):
            # The fine-tune can end while the controller still swings around the
            # budget: one global gate threshold moves the cost on the held-out images
            # into [budget - 0.008, budget - 0.002] (a margin for other images).
            shift, before, after = training.land_on_budget(
                model, budget - LANDING_MARGIN, calibration, tolerance=LANDING_BAND)
            landing = {"threshold_shift": shift, "flops_ratio_before": before,
                       "flops_ratio_after": after, "images": len(calibration)}
            print(f"Landing on the budget: {before:.3f} -> {after:.3f} of the dense MACs "
                  f"on {len(calibration)} held-out training images (gate threshold "
                  f"{shift:+.3f})." if shift else f"Cost {before:.3f} of the dense MACs "
                  f"on {len(calibration)} held-out training images: on the budget, as "
                  "trained.")

    # Evaluate and report.
    model.save(os.path.join(output_dir, "model.keras"))
    name = f"{backbone} {mode}" + (f" budget={budget}" if mode != "dense" else "")
    result = report.evaluate(model, test, name=name, reference_macs=reference_macs)
    result["mode"] = mode
    if landing:
        result["landing"] = landing
    result["budget"] = budget if mode != "dense" else 1.0
    result["dataset"] = data.description + (
        f"; used {len(data.train):,} train / {len(data.test):,} test images drawn at random"
        if train_subset or test_subset else "")
    if export_kind != "none":
        result["export"] = export_and_check(model, export_kind, data.test, output_dir)
    if save_pretrained:
        metrics = {key: result[key] for key in ("top1_error", "flops_ratio", "mean_macs",
                                                 "dense_macs", "num_samples", "budget")}
        metrics["images"] = f"{data.description}: the {len(data.test):,} test images"
        spec = sk.models.save_pretrained(model, save_pretrained, backbone, command, metrics)
        print(f"Saved the pretrained model '{save_pretrained}' (check: cost "
              f"{spec['check']['flops_ratio']:.3f} on the embedded test images).")
    paths = report.write_report(result, os.path.join(output_dir, "report"), command)
    print(report.markdown(result, command))
    print("Report:", ", ".join(paths.values()))
    return result


def backbone_source(pretrained, backbone, data):
    """The backbone to start from: a `.keras` path or a shipped name, or None to train
    stage 1. `"shipped"` picks `<backbone>_cifar10` when it is shipped and `data` is
    10 classes of 32x32x3 images."""
    if pretrained in (None, "", "none"):
        return None
    if pretrained == "shipped":
        name = f"{backbone}_cifar10"
        fits = data.num_classes == 10 and data.train.images.shape[1:] == (32, 32, 3)
        return name if fits and name in sk.models.list_pretrained() else None
    if pretrained.endswith(".keras") or pretrained in sk.models.list_pretrained():
        return pretrained
    raise ValueError(
        "Invalid value for argument `pretrained`. Expected a .keras file, 'shipped', "
        f"'none' or one of {sk.models.list_pretrained()}. Received: pretrained={pretrained!r}")


def export_and_check(model, kind, test, output_dir, images=200):
    """`model` as `<output_dir>/model_<kind>.tflite` (with its gates' decisions as extra
    outputs), checked against Keras on `images` test images, which also calibrate it."""
    x = datasets.normalized(test, images)
    path = os.path.join(output_dir, f"model_{kind}.tflite")
    if kind == "kernels":
        export.build_kernels()  # make -C tflite: nothing to do once built
    export.export_tflite(model, path, kind, calibration_data=x, decisions=True,
                         batch_size=None if kind == "masked" else 1)
    check = export.parity.check_file(model, path, kind, x)
    print(f"Exported {path} ({os.path.getsize(path) / 1e6:.1f} MB): on {len(x)} test images, "
          f"{export.parity.summary(check)}.")
    return {"path": path, "kind": kind, "check_images": len(x), **check}


def main(argv):
    del argv
    if not FLAGS["verbosity"].present:  # progress, the report and real warnings only
        logging.set_verbosity(logging.WARNING)
        tf.get_logger().setLevel("WARNING")
    run(**{name: FLAGS[name].value for name in (
        "backbone", "dataset", "data_dir", "download", "budget", "gate_speed",
        "cost_weighting", "allocation", "budget_ramp", "land_budget", "slimming_l1", "mode", "pretrained",
        "backbone_epochs", "warmup_epochs", "finetune_epochs", "backbone_lr", "warmup_lr",
        "finetune_lr", "batch_size", "clipnorm", "weight_decay", "lr_warmup_epochs",
        "distill", "distill_temperature", "gate_noise", "discrete_fraction", "gate_rescale",
        "cost_floor", "gate_gradient", "gate_start", "gate_order", "calibration_images",
        "train_subset", "test_subset", "output_dir", "seed")},
        command="python " + " ".join(sys.argv), export_kind=FLAGS.export,
        save_pretrained=FLAGS.save_pretrained)


if __name__ == "__main__":
    app.run(main)
