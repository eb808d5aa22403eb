"""An exported model against its Keras original: decisions, top-1 labels, logits."""

import numpy as np

from sanp_keras import flops
from sanp_keras.export import runners


def run_all(runner, images, batch_size=1):
    """Every output of `runner` on `images`, `batch_size` at a time (None: all at once)."""
    if batch_size is None:
        return runner.run(images)
    outs = [runner.run(images[i : i + batch_size]) for i in range(0, len(images), batch_size)]
    return {name: np.concatenate([o[name] for o in outs]) for name in outs[0]}


def compare(model, runner, images, batch_size=1):
    """Agreement of a model exported with `decisions=True` with `model` on `images`.

    Returns a dict: `decisions_equal` (share of (image, channel) gate decisions equal),
    `top1_equal` (share of images with the same top-1 label), `max_logit_diff`,
    `max_abs_logit` (the largest Keras logit: the scale that difference is relative to)
    and `open_share` (mean share of open channels over the gated layers, in Keras).
    """
    got = run_all(runner, images, batch_size)
    want = model.predict(images, verbose=0, batch_size=100)
    decisions = flops.decision_function(model)(images)
    names = [layer.name for layer in flops.gated_layers(model) if layer.mode != "dense"]
    agree = np.concatenate([  # a model without gates: nothing to disagree on
        (got[f"decisions_{i:03d}"] == np.asarray(decisions[n])).ravel()
        for i, n in enumerate(names)
    ] + [np.ones(1, bool)] * (not names))
    return {
        "decisions_equal": float(agree.mean()),
        "top1_equal": float((got["output"].argmax(1) == want.argmax(1)).mean()),
        "max_logit_diff": float(np.abs(got["output"] - want).max()),
        "max_abs_logit": float(np.abs(want).max()),
        "open_share": float(np.mean([np.asarray(decisions[n]).mean() for n in names] or [1.0])),
    }


def check_file(model, path, kind, images):
    """`compare` for the file `export_tflite(model, path, kind, decisions=True)` wrote,
    run by the runner its kind needs (batch 1, but `masked` all at once)."""
    runner = runners.KernelRunner(path) if kind == "kernels" else runners.Interpreter(path)
    return compare(model, runner, images, None if kind == "masked" else 1)


def summary(result):
    """One line of a `compare` result."""
    return (f"decisions equal {100 * result['decisions_equal']:.3f} %, top-1 equal "
            f"{100 * result['top1_equal']:.2f} %, largest logit difference "
            f"{result['max_logit_diff']:.2e}")
