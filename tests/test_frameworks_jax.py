"""Checks of JAX code: ``check`` on JAX functions, ``jax.custom_vjp`` rules included.

The analytic gradient is ``jax.vjp`` (for a ``custom_vjp`` function: its
hand-written ``bwd``) in the caller's dtype; the reference is float64
finite differences, evaluated inside a scoped ``jax.enable_x64`` so the
caller's configuration is untouched. No test passes a tolerance: float64
rtol 1e-5 (a 0.1% error is 100x over it), float32 rtol 2e-3 (a 1% error is
5x over it, float32 rounding ~1e-6 relative far under it).

Cost: tiny arrays; a few seconds (mostly JAX dispatch and compilation).
"""

from __future__ import annotations

import functools

import numpy as np
import pytest

import gradverify as gv

jax = pytest.importorskip("jax")
jnp = jax.numpy


def _np(seed, *shape):
    return np.random.default_rng(seed).standard_normal(shape)


def _tanh_linear(corrupt=None):
    """A ``custom_vjp`` tanh(x @ W); ``corrupt=(argnum, index, factor)`` plants a bug in ``bwd``."""

    @jax.custom_vjp
    def f(x, W):
        return jnp.tanh(x @ W)

    def fwd(x, W):
        y = jnp.tanh(x @ W)
        return y, (x, W, y)

    def bwd(res, g):
        x, W, y = res
        gz = g * (1 - y * y)
        grads = [gz @ W.T, x.T @ gz]
        if corrupt is not None:
            arg, index, factor = corrupt
            grads[arg] = grads[arg].at[index].multiply(factor)
        return tuple(grads)

    f.defvjp(fwd, bwd)
    return f


@pytest.fixture(autouse=True)
def _x64_left_as_found():
    before = bool(jax.config.read("jax_enable_x64"))
    yield
    assert bool(jax.config.read("jax_enable_x64")) == before, "the check changed the global x64 setting"


def test_custom_vjp_float32_arrays_pass_and_stay_float32():
    x, W = jnp.asarray(_np(0, 4, 3), jnp.float32), jnp.asarray(_np(1, 3, 5), jnp.float32)
    r = gv.check(_tanh_linear(), (x, W))
    assert r.passed, str(r)
    assert r.dtype == "float32" and [s.name for s in r.inputs] == ["x", "W"]


def test_custom_vjp_float32_one_percent_error_is_caught():
    # float32 tolerances are relative to the tensor's scale (floor 2e-4 * max|g|),
    # so the 1% error is planted in an element of that scale: the largest one.
    x, W = jnp.asarray(_np(0, 4, 3), jnp.float32), jnp.asarray(_np(1, 3, 5), jnp.float32)
    u = jnp.asarray(_np(99, 4, 5), jnp.float32)
    dW = jax.grad(lambda w: jnp.sum(u * jnp.tanh(x @ w)))(W)
    index = tuple(int(i) for i in np.unravel_index(np.argmax(np.abs(dW)), dW.shape))
    r = gv.check(_tanh_linear((1, index, 1.01)), (x, W))
    assert r.status == "fail" and r.worst.input == "W" and tuple(r.worst.index) == index, str(r)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_float32_no_false_alarm_on_awkward_code(seed):
    def f(x, W):
        z = 4.0 * (x @ W)
        return jax.nn.log_softmax(z, axis=-1) + jax.nn.softplus(z) + jnp.tanh(z) ** 2

    x, W = jnp.asarray(_np(seed, 5, 4), jnp.float32), jnp.asarray(_np(seed + 9, 4, 6), jnp.float32)
    r = gv.check(f, (x, W), seed=seed)
    assert r.passed, str(r)


def test_float64_numpy_inputs_run_in_float64_without_touching_global_config():
    r = gv.check(_tanh_linear((0, (1, 1), 1.001)), (_np(2, 4, 3), _np(3, 3, 5)))
    assert r.status == "fail" and r.dtype == "float64", str(r)
    assert r.worst.input == "x" and tuple(r.worst.index) == (1, 1)
    assert gv.check(_tanh_linear(), (_np(2, 4, 3), _np(3, 3, 5))).passed


def test_float64_jax_arrays_made_under_scoped_x64():
    with jax.enable_x64(True):
        x, W = jnp.asarray(_np(4, 3, 3)), jnp.asarray(_np(5, 3, 2))
        assert x.dtype == jnp.float64
    r = gv.check(_tanh_linear(), (x, W))
    assert r.passed and r.dtype == "float64", str(r)


def test_dict_inputs_by_keyword_and_jit():
    @jax.jit
    def f(W, x):
        return jnp.sum(jnp.sin(x @ W), axis=0)

    x, W = jnp.asarray(_np(6, 4, 3), jnp.float32), jnp.asarray(_np(7, 3, 2), jnp.float32)
    r = gv.check(f, {"x": x, "W": W})
    assert r.passed, str(r)
    assert {s.name for s in r.inputs} == {"x", "W"}


def test_nondiff_argnum_python_int_is_passed_through():
    @functools.partial(jax.custom_vjp, nondiff_argnums=(1,))
    def scaled_sum(x, axis):
        return jnp.sum(x**2, axis=axis)

    def fwd(x, axis):
        return scaled_sum(x, axis), x

    def bwd(axis, x, g):
        return (2 * x * jnp.expand_dims(g, axis),)

    scaled_sum.defvjp(fwd, bwd)
    r = gv.check(scaled_sum, (jnp.asarray(_np(8, 3, 4), jnp.float32), 1))
    assert r.passed, str(r)
    assert [s.name for s in r.inputs] == ["x"]


def test_plain_jnp_function_on_numpy_inputs_is_recognised_by_its_output():
    def f(a, b):  # a plain Python function: only its output says it is JAX
        return jnp.exp(a) * jnp.cos(b)

    r = gv.check(f, (_np(9, 3), _np(10, 3)))
    assert r.passed and r.dtype == "float64", str(r)


def test_pytree_output_and_integer_leaves():
    def f(x, idx):
        return {"y": jnp.tanh(x[idx]), "n": jnp.argmax(x, axis=0), "z": (x**2).sum()}

    r = gv.check(f, (jnp.asarray(_np(11, 4, 3), jnp.float32), jnp.asarray([3, 0, 3])))
    assert r.passed, str(r)
    assert [s.name for s in r.inputs if s.checked] == ["x"]


@pytest.mark.parametrize("key_kind", ["typed", "raw_uint32", "built_inside"])
def test_random_draws_that_depend_on_the_dtype_fall_back_with_a_warning(key_kind):
    # jax.random.normal draws different numbers in 64-bit mode: the float64
    # evaluation would be another function. The check notices (a traced
    # random primitive, or a gross output difference for a key built from a
    # constant inside the function) and runs its finite differences in float32.
    if key_kind == "built_inside":
        def f(a):
            return a * jax.random.normal(jax.random.key(7), a.shape)

        inputs = (jnp.asarray(_np(12, 4, 3), jnp.float32),)
    else:
        def f(a, key):
            return a * jax.random.normal(key, a.shape)

        key = jax.random.key(0) if key_kind == "typed" else jax.random.PRNGKey(0)
        inputs = (jnp.asarray(_np(12, 4, 3), jnp.float32), key)
    r = gv.check(f, inputs)
    assert r.passed, str(r)
    assert any("caller's dtype (float32)" in w for w in r.warnings), r.warnings


def test_ill_conditioned_float32_code_keeps_the_float64_oracle():
    # float32 rounding of 3000 * x is amplified by sin: the float32 output
    # deviates from the float64 one by ~1e-3 of its scale. That is rounding,
    # not another function: the oracle stays float64 (the check widens its
    # tolerance to the forward's own error) and no false alarm.
    def f(x):
        return jnp.sin(3000.0 * x)

    r = gv.check(f, jnp.asarray(_np(13, 6) * 10, jnp.float32))
    assert r.passed, str(r)
    assert not any("caller's dtype (float32)" in w for w in r.warnings), r.warnings


@pytest.mark.parametrize("corrupt", [False, True])
def test_jax_function_with_torch_computed_gradients(corrupt):
    torch = pytest.importorskip("torch")

    def f(x, W):
        return jnp.tanh(x @ W) ** 2

    def vjp(dout, x, W):  # gradients from another autodiff engine
        xt = torch.tensor(np.asarray(x), requires_grad=True)
        Wt = torch.tensor(np.asarray(W), requires_grad=True)
        dx, dW = torch.autograd.grad(torch.tanh(xt @ Wt) ** 2, (xt, Wt), torch.tensor(np.asarray(dout)))
        dW = dW.numpy().copy()
        if corrupt:
            dW[0, 1] *= 1 + 1e-3
        return dx.numpy(), dW

    r = gv.check(f, (_np(13, 4, 3), _np(14, 3, 2)), vjp=vjp)
    if corrupt:  # 1e-3 relative in one float64 element: 100x over rtol
        assert r.status == "fail" and r.worst.input == "W" and tuple(r.worst.index) == (0, 1), str(r)
    else:
        assert r.passed and r.dtype == "float64", str(r)


@pytest.mark.parametrize("corrupt", [False, True])
def test_numpy_function_with_jax_computed_gradients(corrupt):
    def f_np(x, W):
        return np.log1p(np.exp(x @ W))

    def vjp(dout, x, W):
        with jax.enable_x64(True):
            _, back = jax.vjp(lambda a, b: jax.nn.softplus(a @ b), jnp.asarray(x), jnp.asarray(W))
            dx, dW = (np.array(g) for g in back(jnp.asarray(dout)))
        if corrupt:
            dx[1, 2] *= 1 - 1e-3
        return dx, dW

    r = gv.check(f_np, (_np(15, 3, 3), _np(16, 3, 2)), vjp=vjp)
    if corrupt:
        assert r.status == "fail" and r.worst.input == "x" and tuple(r.worst.index) == (1, 2), str(r)
    else:
        assert r.passed, str(r)


def test_bwd_returning_a_wrong_shape_is_a_shape_mismatch():
    f = jax.custom_vjp(lambda x, b: x + b)
    f.defvjp(lambda x, b: (x + b, None), lambda _, g: (g, g))  # db not summed over the broadcast axis
    with pytest.raises(gv.ShapeMismatch, match="wrong shape"):
        gv.check(f, (_np(50, 3, 4), _np(51, 4)))


def test_only_integer_inputs_is_an_error():
    with pytest.raises(gv.NoDifferentiableInputs):
        gv.check(lambda i: i * 2.0, jnp.arange(3))


def _mlp(bug):
    @jax.custom_vjp
    def layer(params, x):
        return jnp.tanh(x @ params["W"] + params["b"])

    def fwd(params, x):
        y = layer(params, x)
        return y, (params, x, y)

    def bwd(res, g):
        params, x, y = res
        gz = g * (1 - y * y)
        db = gz.sum(axis=0) * (1.001 if bug else 1.0)
        return {"W": x.T @ gz, "b": db}, gz @ params["W"].T

    layer.defvjp(fwd, bwd)
    return layer


@pytest.mark.parametrize("bug", [False, True])
def test_pytree_argument_leaves_are_checked_and_named(bug):
    params = {"W": _np(40, 3, 2), "b": _np(41, 2)}
    r = gv.check(_mlp(bug), (params, _np(42, 4, 3)))
    assert {s.name for s in r.inputs} == {"params['W']", "params['b']", "x"}
    if bug:  # 0.1% on the whole bias gradient, float64
        assert r.status == "fail" and r.worst.input == "params['b']", str(r)
    else:
        assert r.passed, str(r)


@pytest.mark.parametrize("corrupt", [False, True])
def test_pytree_argument_with_user_vjp(corrupt):
    def f(params, x):
        return jnp.sin(x * params[0]) + params[1]

    def vjp(dout, params, x):
        c = jnp.cos(x * params[0])
        dp0 = (dout * c * x).at[0].multiply(1.001 if corrupt else 1.0)
        return (dp0, dout), dout * c * params[0]

    r = gv.check(f, ((_np(43, 3), _np(44, 3)), _np(45, 3)), vjp=vjp)
    if corrupt:
        assert r.status == "fail" and r.worst.input == "params[0]" and tuple(r.worst.index) == (0,), str(r)
    else:
        assert r.passed, str(r)


# ---------------------------------------------------------------------------
# issue 12: un-jitted JAX code is evaluated under jax.jit; untraceable code falls back with a warning
# ---------------------------------------------------------------------------

def _attention():
    @jax.custom_vjp
    def attention(q, k, v):
        p = jax.nn.softmax(q @ k.T / jnp.sqrt(q.shape[-1]), axis=-1)
        return p @ v

    def fwd(q, k, v):
        p = jax.nn.softmax(q @ k.T / jnp.sqrt(q.shape[-1]), axis=-1)
        return p @ v, (q, k, v, p)

    def bwd(res, g):
        q, k, v, p = res
        dp = g @ v.T
        ds = p * (dp - jnp.sum(dp * p, axis=-1, keepdims=True)) / jnp.sqrt(q.shape[-1])
        return ds @ k, ds.T @ q, p.T @ g

    attention.defvjp(fwd, bwd)
    return attention


def test_an_unjitted_custom_vjp_is_compiled_once_and_reused(monkeypatch):
    from gradverify.frameworks import _jax as J

    attention = _attention()
    rng = np.random.default_rng(0)
    q, k, v = (jnp.asarray(rng.standard_normal((4, 8)), dtype=jnp.float32) for _ in range(3))
    built = []
    real_jit = jax.jit
    monkeypatch.setattr(J.jax, "jit", lambda f, *a, **kw: built.append(f) or real_jit(f, *a, **kw))
    first = gv.check(attention, (q, k, v))
    assert first.passed and first.reference == "jax"
    assert built, "the check compiled nothing: the function ran eagerly"
    n_built = len(built)
    again = gv.check(attention, (q, k, v))          # same function, same layout: the compiled code is reused
    assert again.passed and len(built) == n_built
    assert not any("could not be compiled" in w for w in first.warnings + again.warnings)


def test_a_wrong_custom_vjp_is_still_caught_under_jit():
    attention = _attention()
    fwd, bwd = attention.fwd, attention.bwd

    def bwd_bug(res, g):
        dq, dk, dv = bwd(res, g)
        return dq, dk, dv.at[1, 2].multiply(1.01)

    attention.defvjp(fwd, bwd_bug)
    rng = np.random.default_rng(1)
    q, k, v = (jnp.asarray(rng.standard_normal((4, 8)), dtype=jnp.float32) for _ in range(3))
    result = gv.check(attention, (q, k, v))
    assert not result.passed and result.worst.input == "v" and result.worst.index == (1, 2)


def test_code_that_cannot_be_jitted_falls_back_with_a_warning():
    def branchy(x):
        if float(jnp.sum(x)) > 0:          # Python control flow on a value: not traceable
            return jnp.sin(x)
        return jnp.cos(x)

    # (jax.vjp cannot differentiate it either, so its gradient comes from a vjp=)
    result = gv.check(branchy, (jnp.linspace(0.1, 1.0, 5),), vjp=lambda g, x: (g * jnp.cos(x),))
    assert result.passed and result.reference == "fd"
    assert any("could not be compiled with jax.jit" in w and "ran eagerly" in w for w in result.warnings)


# ---------------------------------------------------------------------------
# issue 16: compiled callables shared by the checks of one function (no timing here: benchmarks/checkers.py)
# ---------------------------------------------------------------------------

def _traced(c=1.0):
    """A plain JAX function that counts its traces: its Python body runs only when JAX traces it.

    ``traces`` records, per trace, whether the argument was a batch (a
    ``jax.vmap`` inside the compiled call) or not.
    """
    traces = []

    def f(x):
        traces.append(type(x).__name__ == "BatchTracer")
        return c * jnp.sin(x) * x

    return f, traces


@pytest.fixture
def fresh_cache(monkeypatch):
    """An empty cache of compiled callables for this test (the module's own left as it was)."""
    import collections

    from gradverify.frameworks import _jax as J

    monkeypatch.setattr(J, "_COMPILED", collections.OrderedDict())
    return J


def test_a_second_check_of_the_same_function_traces_nothing(fresh_cache, monkeypatch):
    # (small requests stay loops on later checks too: only the compiled callables of the first are reused)
    monkeypatch.setattr(fresh_cache.JaxFunctionTarget, "warm_batch_min_rows", 10**9)
    f, traces = _traced()
    x = jnp.asarray(_np(50, 2500), dtype=jnp.float32)   # 2500 elements: a full check batches from the start
    first = gv.check(f, (x,), mode="full")
    assert first.passed and first.mode == "full", str(first)
    n = len(traces)
    assert n > 0 and any(traces), "the first check traced no batched call"
    again = gv.check(f, (x,), mode="full")
    assert again.passed and len(traces) == n, f"{len(traces) - n} new trace(s) on the second check"


def test_small_requests_are_batched_once_the_function_was_checked(fresh_cache):
    f, traces = _traced()
    x = jnp.asarray(_np(51, 3, 4), dtype=jnp.float32)
    gv.check(f, (x,), mode="fast")
    assert traces and not any(traces), "a first check compiled a batch call for 16 rows"
    n = len(traces)
    second = gv.check(f, (x,), mode="fast")         # seen before: its 16-row probe requests are vmapped
    assert second.passed and any(traces[n:]) and not any(not b for b in traces[n:])
    n = len(traces)
    third = gv.check(f, (x,), mode="fast")
    assert third.passed and len(traces) == n, "the third check traced again"
    assert third.evaluations == second.evaluations


def test_each_input_shape_compiles_once(fresh_cache, monkeypatch):
    monkeypatch.setattr(fresh_cache.JaxFunctionTarget, "warm_batch_min_rows", 10**9)  # loops only: one trace each
    f, traces = _traced()
    seen = set()
    for shape in ((5,), (7,), (5,), (7,)):
        before = len(traces)
        assert gv.check(f, (jnp.asarray(_np(52, *shape)),), mode="full").passed
        assert (len(traces) > before) == (shape not in seen), f"shape {shape}: {len(traces) - before} trace(s)"
        seen.add(shape)


def test_closures_over_different_values_are_kept_apart(fresh_cache):
    # same code, different captured constant: each function object gets its own compiled callables (the
    # finite differences, against a correct vjp -- one vjp object for all -- would fail on another's evaluations)
    x = jnp.asarray(_np(53, 6))
    current = []

    def vjp(g, x):
        return (g * current[-1] * (jnp.cos(x) * x + jnp.sin(x)),)

    for c in (1.0, 3.0, -2.0):
        current.append(c)
        f, _ = _traced(c)
        r = gv.check(f, (x,), vjp=vjp, mode="full", against="fd")
        assert r.passed, f"c={c}: {r}"

    # one function, a pass-through argument baked into the trace: another value is another compilation
    def scaled(x, c):
        return c * jnp.sin(x)

    def scaled_vjp(g, x, c):
        return g * c * jnp.cos(x), None

    for c in (2.0, 5.0, 2.0):
        r = gv.check(scaled, (x, c), vjp=scaled_vjp, mode="full", against="fd")
        assert r.passed, f"c={c}: {r}"


def test_the_cache_keeps_no_input_alive_and_is_bounded(fresh_cache):
    import gc
    import weakref

    f, _ = _traced()
    params = {"W": jnp.asarray(_np(54, 4, 3)), "b": jnp.asarray(_np(55, 3))}
    refs = [weakref.ref(v) for v in params.values()]
    assert gv.check(lambda p: f(p["W"]) + p["b"], (params,)).passed
    del params
    gc.collect()
    assert all(r() is None for r in refs), "the cache of compiled callables holds the caller's arrays"

    n = fresh_cache.COMPILED_CACHE_SIZE
    for _ in range(n + 3):
        g, _ = _traced()
        gv.check(g, (jnp.asarray(_np(56, 3)),), mode="fast")
    assert len(fresh_cache._COMPILED) == n


def test_code_that_cannot_be_jitted_still_runs_eagerly_on_later_checks(fresh_cache):
    def branchy(x):
        if float(jnp.sum(x)) > 0:
            return jnp.sin(x)
        return jnp.cos(x)

    for _ in range(2):
        result = gv.check(branchy, (jnp.linspace(0.1, 1.0, 5),), vjp=lambda g, x: (g * jnp.cos(x),))
        assert result.passed and any("could not be compiled with jax.jit" in w for w in result.warnings)
