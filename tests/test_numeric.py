"""Finite differences: every method, its error estimate, and the step rule.

Tolerances here compare a finite-difference value with a known derivative;
each states the accuracy the method should reach and why.
"""

import numpy as np
import pytest

from gradverify import SpecError
from gradverify import numeric as nd


@pytest.mark.parametrize("method", sorted(nd.METHODS))
def test_derivative_of_exp_every_method(method):
    x = np.array(0.7)
    d = nd.derivative(np.exp, x, method=method)
    true = np.exp(0.7)
    err = abs(float(d.value) - true)
    # forward differences are first order (h ~ 4e-6 relative: error ~1e-5);
    # the others are second order or better (error < 1e-8).
    limit = 1e-4 if method == "forward" else 1e-8
    assert err < limit, (method, err)
    # The error estimate is honest: the true error is within a small factor of it
    # (or at rounding level, 1e-12, where the estimate may be 0).
    assert err <= 10 * float(d.error) + 1e-12, (method, err, float(d.error))
    assert d.evaluations == nd.METHODS[method][1]


def test_complex_step_is_exact_to_rounding():
    # complex step has no subtractive cancellation: error at the 1e-15 level
    d = nd.derivative(lambda z: np.sin(z) * np.exp(z), np.array(1.3), method="complex")
    true = np.cos(1.3) * np.exp(1.3) + np.sin(1.3) * np.exp(1.3)
    assert abs(float(d.value) - true) < 1e-14 * abs(true)


def test_directional_derivative_matches_jacobian_vector_product():
    rng = np.random.default_rng(0)
    A = rng.standard_normal((3, 4))
    x = rng.standard_normal(4)
    v = rng.standard_normal(4)
    f = lambda x: np.tanh(A @ x)  # noqa: E731
    jv = (1 - np.tanh(A @ x) ** 2) * (A @ v)
    d = nd.derivative(f, x, v)
    # Richardson on a smooth function: error ~h^4 ~ 1e-13 relative; 1e-9 is generous
    np.testing.assert_allclose(d.value, jv, rtol=1e-9, atol=1e-12)


def test_jacobian_and_gradient_shapes_and_values():
    rng = np.random.default_rng(1)
    A = rng.standard_normal((2, 3))
    x = rng.standard_normal(3)
    jac = nd.jacobian(lambda x: A @ x, x)
    assert jac.value.shape == (2, 3)
    # a linear map: central differences are exact up to rounding (1e-10 relative)
    np.testing.assert_allclose(jac.value, A, rtol=1e-9, atol=1e-10)
    g = nd.gradient(lambda x: np.sum(x**3), x)
    np.testing.assert_allclose(g.value, 3 * x**2, rtol=1e-9)
    assert g.evaluations == 1 + 4 * x.size
    with pytest.raises(SpecError, match="scalar"):
        nd.gradient(lambda x: A @ x, x)


def test_step_scales_with_magnitude_and_dtype():
    x = np.array([4.0, 2.0, 1e-6, 0.0])
    h = nd.default_step(x, np.float64, "central")
    assert h[0] / h[1] == pytest.approx(2.0)
    # coordinates far below the tensor's rms use rms/10 as scale (a zero
    # coordinate still gets a usable step)
    rms = np.sqrt(np.mean(x**2))
    assert h[2] == h[3] == pytest.approx(h[1] * 0.1 * rms / 2.0)
    # a tensor of tiny values is moved relative to its own size
    assert nd.default_step(np.full(3, 1e-4), np.float64, "central")[0] == pytest.approx(1e-4 * h[1] / 2.0)
    h32 = nd.default_step(np.ones(1), np.float32, "central")
    h64 = nd.default_step(np.ones(1), np.float64, "central")
    assert h32[0] > 10 * h64[0]
    with pytest.raises(SpecError, match="unknown method"):
        nd.default_step(x, np.float64, "nope")


def test_projected_gradients_perturb_in_place_and_restore_bits():
    rng = np.random.default_rng(2)
    W = rng.standard_normal((3, 3)).astype(np.float32)
    before = W.copy()
    x = rng.standard_normal(3)
    u = rng.standard_normal(3)
    out, evals = nd.projected_gradients(lambda: np.tanh(W @ x), {"W": W}, u)
    assert np.array_equal(W, before)  # restored bit for bit
    true = np.outer(u * (1 - np.tanh(W.astype(np.float64) @ x) ** 2), x)
    # W is float32 storage but the evaluation is float64 (x is float64) and the
    # step actually taken divides the difference: accuracy ~1e-9 relative.
    np.testing.assert_allclose(out["W"].value, true, rtol=1e-7, atol=1e-9)
    assert evals == 1 + 4 * W.size


def test_kink_diagnosed_from_one_sided_differences():
    x = np.array([0.0, 1.0])
    u = np.array([1.0, 1.0])
    from gradverify.numeric import FAIL

    out, _ = nd.projected_gradients(lambda: np.abs(x), {"x": x}, u, judge=lambda *a: FAIL)
    d = out["x"]
    assert d.kink[0] and not d.kink[1]
    assert (d.left[0], d.right[0]) == (pytest.approx(-1.0), pytest.approx(1.0))


@pytest.mark.parametrize("err, expected, along", [(0.0, 2.0, "random"), (1e-3, 1.0, "element"),
                                                   (1e-1, 1.0, "random")])
def test_taylor_remainder_rate_tells_right_from_wrong(err, expected, along):
    # No tolerance: the rate is ~2 for the true gradient and ~1 for a wrong
    # one once the step is small enough for the linear error to beat the
    # curvature (for 0.1% in one element: along that element, as the checks
    # use it). +-0.1 on the median of the last rates is far from the other.
    rng = np.random.default_rng(0)
    W = rng.standard_normal((3, 3))
    x = rng.standard_normal(3)
    u = rng.standard_normal(3)
    g = np.outer(u * (1 - np.tanh(W @ x) ** 2), x)
    g[1, 2] *= 1 + err
    before = W.copy()
    v = rng.standard_normal((3, 3))
    if along == "element":
        v = np.zeros((3, 3))
        v[1, 2] = 1.0
    t = nd.taylor_test(lambda: np.tanh(W @ x), W, v, g, u)
    assert np.array_equal(W, before)
    assert t.rate == pytest.approx(expected, abs=0.1)
    assert t.evaluations == 13


def test_jacobian_refuses_to_exceed_the_memory_budget():
    with pytest.raises(SpecError, match="memory_budget"):
        nd.jacobian(lambda x: np.outer(x, x).ravel(), np.ones(300), memory_budget=2**20)


def test_batched_first_pass_gives_the_same_derivatives():
    rng = np.random.default_rng(5)
    W = rng.standard_normal((4, 3))
    x = rng.standard_normal((2, 4))
    u = rng.standard_normal((2, 3))
    calls = []

    def evaluate():
        return np.tanh(x @ W)

    def evaluate_batch(name, flat, values):
        calls.append(len(flat))
        Ws = np.repeat(W[None], len(flat), axis=0)
        Ws.reshape(len(flat), -1)[np.arange(len(flat)), flat] = values
        return np.tanh(np.einsum("ij,bjk->bik", x, Ws))

    plain, n_plain = nd.projected_gradients(evaluate, {"W": W}, u)
    batched, n_batched = nd.projected_gradients(evaluate, {"W": W}, u, evaluate_batch=evaluate_batch,
                                                batch_bytes=8 * 6 * 4 * 5)
    # same evaluations, grouped: identical arithmetic up to einsum vs matmul rounding (1e-12)
    np.testing.assert_allclose(batched["W"].value, plain["W"].value, rtol=1e-9, atol=1e-12)
    assert n_batched == n_plain and sum(calls) == 4 * W.size and len(calls) == 3


@pytest.mark.parametrize("grouped, group_bytes", [(True, 0), (True, 47), (False, 0)])
def test_small_tensors_probed_in_one_call_give_the_same_projections(grouped, group_bytes):
    """directional_mismatches_together: the small tensors' first levels in one call, each projection the one
    directional_mismatches gives for its tensor alone (same rows, same arithmetic: equal, not close)."""
    from gradverify.references.projections import directional_mismatches_together

    rng = np.random.default_rng(7)
    point = {"W": rng.standard_normal((6, 5)), "b": rng.standard_normal(5), "s": rng.standard_normal(1)}
    before = {k: v.copy() for k, v in point.items()}
    x, u = rng.standard_normal((3, 6)), rng.standard_normal((3, 5))

    def f(W, b, s):
        return np.tanh(x @ W + b) * s

    z = np.tanh(x @ point["W"] + point["b"])
    gz = u * point["s"] * (1 - z ** 2)
    grads = {"W": x.T @ gz, "b": gz.sum(0), "s": np.array([np.sum(u * z)])}
    grads["b"][2] += 0.5  # one wrong element: its projections are off by -0.5 * v[2]
    dirs = {k: [rng.standard_normal(v.shape) for _ in range(2)] for k, v in point.items()}
    calls = []

    def rows(name, r):
        calls.append((name,))
        return np.stack([f(**{**point, name: row}) for row in r])

    def points(given, moved=None):
        calls.append(tuple(sorted(given)))
        n = len(next(iter(given.values())))
        return np.stack([f(**{**point, **{k: r[i] for k, r in given.items()}}) for i in range(n)])

    def evaluate():
        return f(**point)

    y0 = evaluate()
    alone = {k: nd.directional_mismatches(evaluate, point[k], dirs[k], grads[k], u, y0=y0,
                                          evaluate_rows=lambda r, k=k: rows(k, r)) for k in point}
    calls.clear()
    # 4,000 bytes: b's and s's rows and their group's fit (1,440 bytes), W's own (3,360) but not W with them
    got = directional_mismatches_together(evaluate, rows, points if grouped else None,
                                          [(k, point[k], dirs[k], grads[k], None) for k in point], u, y0=y0,
                                          rows_bytes=4000, group_bytes=group_bytes)
    assert got == [alone[k] for k in point]
    # (b and s take 48 bytes together: a group of at most 47 leaves them apart)
    assert sorted(calls) == ([("W",), ("b", "s")] if grouped and group_bytes != 47 else [("W",), ("b",), ("s",)])
    assert all(np.array_equal(point[k], before[k]) for k in point)  # left bit for bit as it was
    # the projections measure what they should: b's mismatch is -0.5 v[2] (Richardson on tanh at steps
    # ~1e-3: error far below 1e-6), the correct tensors' are rounding
    np.testing.assert_allclose([p.mismatch for p in alone["b"]], [-0.5 * v[2] for v in dirs["b"]], atol=1e-6)
    assert max(abs(p.mismatch) for k in ("W", "s") for p in alone[k]) < 1e-6
