"""Whether an export runs faster than the dense model it prunes, timed where it is made.

Gating pays only where enough work is skipped to cover the gates: a model whose
layers prune little, or whose maps are large (MobileNetV2 at 224x224 with half its
MACs pruned ran 0.80-0.82x of dense in every kind, bench/results/mobilenet_224.md),
exports slower than the plain model it came from. `export_tflite` calls
`check_against_dense` on the file it wrote so that it never hands such a model back
without saying so.
"""

import os
import tempfile
import warnings

import numpy as np

from sanp_keras.export import runners

RUNS = 30  # timed runs per model, side by side (median)
WARMUP = 5
# The reference's int8 ranges need only be plausible for timing: a few images do.
INT8_REFERENCE_IMAGES = 16


def dense_reference(model, folder, quantize=None, calibration_data=None):
    """`sanp_keras.strip(model)` exported as a plain batch-1 model under `folder`:
    what the user would ship without gates (int8 too when `quantize="int8"`)."""
    from sanp_keras.convert import strip  # noqa: PLC0415  (convert imports export)
    from sanp_keras.export.tflite_export import export_tflite  # noqa: PLC0415

    images = None
    if quantize is not None:
        images = np.asarray(calibration_data, np.float32)[:INT8_REFERENCE_IMAGES]
    return export_tflite(strip(model), os.path.join(folder, "dense.tflite"), "masked",
                         calibration_data=images, batch_size=1, quantize=quantize,
                         speed_check=False)


def speedup_over_dense(model, path, image, quantize=None, calibration_data=None,
                       num_threads=1, runs=RUNS, warmup=WARMUP):
    """t_dense / t_export at batch 1 on `image` (1, H, W, C), both models timed side by
    side (`runners.time_side_by_side`) in the runtime that runs the export.

    Returns (speed-up, {"dense": ms, "export": ms}).
    """
    with tempfile.TemporaryDirectory() as folder:
        dense = dense_reference(model, folder, quantize, calibration_data)
        times = runners.time_side_by_side({"dense": dense, "export": path}, image,
                                          num_threads, runs, warmup)
    return times["dense"] / times["export"], times


def check_against_dense(model, path, kind, calibration_data, quantize=None):
    """Warns when the export at `path` runs slower than the dense model (1 thread).

    Returns the measured speed-up t_dense / t_export, or None where the kernel
    library that times both (`runners.KernelRunner`) is not built: then it says so.
    """
    if not os.path.exists(runners.library_path()):
        warnings.warn(
            f"export_tflite(kind={kind!r}): not timed against the dense model, the kernel "
            f"library is not built ({runners.library_path()}; "
            "sanp_keras.export.build_kernels() builds it). speed_check=False skips this.",
            stacklevel=3)
        return None
    image = np.asarray(calibration_data, np.float32)[:1]
    speedup, times = speedup_over_dense(model, path, image, quantize, calibration_data)
    if speedup < 1.0:
        warnings.warn(
            f"export_tflite(kind={kind!r}) wrote {path}, which ran {speedup:.2f}x the speed "
            f"of the dense model on this machine ({times['export']:.3f} ms against "
            f"{times['dense']:.3f} ms, batch 1, 1 thread, median of {RUNS} runs): its gates "
            "cost more than the work they skip. sanp_keras.strip(model) exported as a plain "
            "model is faster here; a model that prunes more, layer_choice='measured', or "
            "drop_closed_channels (sanp_keras.thinning) may make the gated one pay.",
            stacklevel=3)
    return speedup
