"""Gated models under `tf.distribute.MirroredStrategy` on two logical CPU devices."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def distributed():
    env = {**os.environ, "PYTHONPATH": ROOT + os.pathsep + os.environ.get("PYTHONPATH", "")}
    done = subprocess.run([sys.executable, "-m", "tests.distributed_run"], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_the_open_rate_covers_every_replica_s_batch(distributed):
    rate = distributed["one_step"]
    assert rate["first_half"] != rate["second_half"]  # the replicas saw different gates
    np.testing.assert_allclose(rate["active_rate"], rate["batch"], atol=1e-6)


def test_the_budget_lands_under_the_strategy_as_on_one_device(distributed):
    single, mirrored = distributed["single"], distributed["mirrored"]
    assert mirrored["replicas"] == 2 and single["replicas"] == 1
    assert abs(mirrored["cost"] - 0.5) < 0.04 and abs(single["cost"] - 0.5) < 0.04
    assert abs(mirrored["cost"] - single["cost"]) < 0.03
    assert mirrored["accuracy"] > 0.8
