import keras
import numpy as np
import pytest

from sanp_keras import SaliencyGate
from tests import oracle


def _x(n=6, h=8, c=5, seed=0):
    return np.random.RandomState(seed).normal(size=(n, h, h, c)).astype("float32")


def test_basics_shapes_weights_and_config():
    gate = SaliencyGate(12, reduction=4, min_hidden=2)
    scores, decisions = gate(_x())
    assert scores.shape == (6, 12) and decisions.shape == (6, 12)
    # hidden = max(2, ceil(5 / 4)) = 2
    assert [tuple(w.shape) for w in gate.trainable_weights] == [(5, 2), (2,), (2, 12), (12,)]
    clone = SaliencyGate.from_config(gate.get_config())
    assert clone.get_config() == gate.get_config()


def test_min_hidden_applies_to_thin_inputs():
    gate = SaliencyGate(16, reduction=16, min_hidden=8)
    gate.build((None, 8, 8, 3))
    assert gate.squeeze_kernel.shape == (3, 8)


def test_fresh_gate_keeps_every_channel_open():
    _, decisions = SaliencyGate(8)(_x())
    np.testing.assert_array_equal(decisions, np.ones((6, 8)))


def test_inference_matches_numpy_oracle_and_is_exactly_binary():
    x = _x(c=16)
    gate = SaliencyGate(10, reduction=2)
    gate.build(x.shape)
    oracle.randomize(gate, np.random.RandomState(1))
    w1, c1, w2, c2 = [w.numpy() for w in gate.weights]
    scores, decisions = gate(x, training=False)
    g = oracle.gate_scores(x, w1, c1, w2, c2)
    np.testing.assert_allclose(scores, g, atol=1e-5)
    decisions = np.asarray(decisions)
    assert set(np.unique(decisions)) <= {0.0, 1.0}
    np.testing.assert_array_equal(decisions, oracle.inference_decisions(g))
    assert 0 < decisions.mean() < 1  # the random gate really prunes


def test_at_least_one_channel_stays_open():
    gate = SaliencyGate(6, bias_init=-10.0)
    _, decisions = gate(_x())
    np.testing.assert_array_equal(np.asarray(decisions).sum(axis=1), np.ones(6))


def test_training_decisions_are_noisy_mix_of_binary_and_continuous():
    gate = SaliencyGate(64, bias_init=0.0, noise_stddev=1.0, seed=3)
    _, decisions = gate(_x(n=200), training=True)
    decisions = np.asarray(decisions)
    binary_rows = np.all((decisions == 0) | (decisions == 1), axis=1)
    assert 0.3 < binary_rows.mean() < 0.7  # one half of the samples, the other half v


def test_fixed_k_keeps_k_channels_per_sample():
    x = _x(c=8)
    gate = SaliencyGate(10, mode="fixed_k", keep_ratio=0.3)
    gate.build(x.shape)
    oracle.randomize(gate, np.random.RandomState(2))
    for training in (False, True):
        _, decisions = gate(x, training=training)
        np.testing.assert_array_equal(np.asarray(decisions).sum(axis=1), np.full(6, 3))


def test_fbs_matches_its_numpy_oracle_and_keeps_at_most_k_winners():
    # FBS (Gao et al. 2019): g = relu(mean_hw |x| . W + c), top k of g, 0s dropped.
    rng = np.random.RandomState(0)  # per-sample channel magnitudes: varied saliency
    x = (_x(n=40, c=8) * rng.uniform(0.1, 3.0, (40, 1, 1, 8))).astype("float32")
    gate = SaliencyGate(10, mode="fbs", keep_ratio=0.5)
    gate.build(x.shape)
    oracle.randomize(gate, np.random.RandomState(4))
    gate.excite_bias.assign(np.linspace(-2.0, 0.5, 10))  # many scores relu'd to 0
    w, c = [v.numpy() for v in gate.weights]
    assert w.shape == (8, 10)
    g = np.maximum(np.abs(x).mean(axis=(1, 2)) @ w + c, 0.0)
    scores, decisions = gate(x, training=False)
    np.testing.assert_allclose(scores, g, atol=1e-5)
    kth = np.sort(g, axis=1)[:, -5:-4]
    want = ((g >= kth) & (g > 0)).astype("float32")
    want[np.arange(40), g.argmax(axis=1)] = 1.0
    np.testing.assert_array_equal(decisions, want)
    counts = np.asarray(decisions).sum(axis=1)
    assert counts.max() == 5 and counts.min() >= 1 and (counts < 5).any()  # zeros dropped
    np.testing.assert_allclose(gate.scale(scores), scores)  # FBS scales by g itself


def test_fbs_adds_its_lasso_in_training_only():
    x = _x(c=8)
    gate = SaliencyGate(6, mode="fbs", fbs_l1=0.5)
    scores, _ = gate(x, training=True)
    assert len(gate.losses) == 1
    np.testing.assert_allclose(gate.losses[0], 0.5 * np.asarray(scores).sum(axis=1).mean(),
                               rtol=1e-6)
    fresh = SaliencyGate(6, mode="fbs")
    fresh(x, training=False)
    assert not fresh.losses
    np.testing.assert_allclose(fresh(x)[0], 1.0, atol=0.11)  # a fresh gate scales by ~1


def test_static_makes_one_decision_for_every_sample():
    gate = SaliencyGate(7, mode="static")
    gate.build((None, 8, 8, 5))
    gate.excite_kernel.assign(np.zeros(gate.excite_kernel.shape))
    gate.excite_bias.assign(np.array([1, -1, 2, -2, 3, -3, 0.5], "float32"))
    _, decisions = gate(_x(), training=False)
    np.testing.assert_array_equal(np.asarray(decisions), np.tile([1, 0, 1, 0, 1, 0, 1], (6, 1)))


def test_dense_mode_has_no_weights_and_opens_everything():
    gate = SaliencyGate(4, mode="dense")
    _, decisions = gate(_x(), training=True)
    assert gate.weights == []
    np.testing.assert_array_equal(decisions, np.ones((6, 4)))


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"units": 0}, "units=0"),
        ({"units": 4, "reduction": 0}, "reduction=0"),
        ({"units": 4, "mode": "topk"}, "mode='topk'"),
        ({"units": 4, "keep_ratio": 1.5}, "keep_ratio=1.5"),
        ({"units": 4, "noise_stddev": -1.0}, "noise_stddev=-1.0"),
    ],
)
def test_bad_arguments_name_the_value(kwargs, message):
    with pytest.raises(ValueError, match=message):
        SaliencyGate(**kwargs)


def test_rank_must_be_four():
    with pytest.raises(ValueError, match="rank 4"):
        SaliencyGate(4)(keras.ops.ones((2, 8, 3)))
