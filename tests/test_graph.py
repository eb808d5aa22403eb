import numpy as np

from sanp_keras import graph


def test_evaluate_and_expected_follow_the_channel_algebra():
    a, b = graph.Gate("a", 2), graph.Gate("b", 2)
    expr = graph.Concat((graph.Union((a, b)), graph.Intersect((a, b)), graph.Zero(1),
                         graph.Dense(1)))
    assert graph.width(expr) == 6
    assert graph.gate_names(expr) == {"a", "b"}
    decisions = {"a": np.array([[1, 0], [0, 0]]), "b": np.array([[0, 0], [1, 1]])}
    np.testing.assert_array_equal(
        graph.evaluate(expr, decisions, 2),
        [[1, 0, 0, 0, 0, 1], [1, 1, 0, 0, 0, 1]],
    )
    rates = {"a": np.array([0.5, 0.0]), "b": np.array([0.5, 1.0])}
    np.testing.assert_allclose(graph.expected(expr, rates), [0.75, 1.0, 0.25, 0.0, 0.0, 1.0])
