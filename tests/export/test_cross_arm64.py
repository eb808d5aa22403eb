"""The kernels for Android arm64: cross-built with clang (warnings as errors) and fuzzed
under qemu-aarch64, also with ASan + UBSan (`tflite/cross_check.sh`)."""

import os
import shutil
import subprocess

import pytest

SCRIPT = os.path.join(os.path.dirname(__file__), "..", "..", "tflite", "cross_check.sh")
TOOLS = ("clang", "aarch64-linux-gnu-gcc")


@pytest.mark.skipif(
    any(shutil.which(t) is None for t in TOOLS)
    or not (shutil.which("qemu-aarch64-static") or shutil.which("qemu-aarch64")),
    reason="needs clang, gcc-aarch64-linux-gnu and qemu-user-static (.ci/run installs "
           "them where apt-get runs as root)")
def test_arm64_build_and_fuzz_under_emulation():
    done = subprocess.run([SCRIPT, "300"], capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert done.stdout.count("ARM aarch64") >= 4  # library + run_model, make (and cmake)
    for threads in ("1 thread", "2 threads", "3 threads"):  # clang build, gcc ASan build
        assert done.stdout.count(f"generic, {threads}: 300 cases, 0 failures") == 2, done.stdout
