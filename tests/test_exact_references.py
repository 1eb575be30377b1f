"""Exact references (issue 11): the engine and the frameworks' autodiff as the oracle, checked themselves.

Tolerances: against an exact reference a float64 gradient is held to
rounding (``EXACT_TOLERANCES``: 1e-10 relative), so a formula off by 1e-7
relative must fail, and a correct float64 backward (rounding ~1e-14) must
pass. Everything that needs the engine's numpy tracing uses plain numpy
layers; torch and JAX cases are skipped only when the framework is absent.
"""

from __future__ import annotations

import numpy as np
import pytest

import gradverify as gv
from gradverify.errors import SpecError


# -- numpy layers, the engine as the oracle ----------------------------------------------------------

class Dense:
    """y = tanh(x W + b); ``scale`` multiplies dW[i, j] (a planted error) and ``const`` the derivative."""

    def __init__(self, n_in=6, n_out=4, seed=0, bad=None, const=1.0):
        rng = np.random.default_rng(seed)
        self.params = {"W": rng.standard_normal((n_in, n_out)) / np.sqrt(n_in), "b": rng.standard_normal(n_out)}
        self.bad, self.const = bad, const

    def forward(self, x):
        self.x = x
        self.y = np.tanh(x @ self.params["W"] + self.params["b"])
        return self.y

    def backward(self, dy):
        d = dy * (self.const - self.y ** 2)
        dW = self.x.T @ d
        if self.bad is not None:
            idx, factor = self.bad
            dW[idx] *= factor
        self.grads = {"W": dW, "b": d.sum(0)}
        return d @ self.params["W"].T


def test_numpy_layer_is_checked_against_the_engine():
    r = gv.check_layer(Dense(), (5, 6))
    assert r.passed and r.reference == "reference", r
    # one traced forward and backward, plus the projections that check the reference: far below 4 per element
    assert r.evaluations < 4 * (6 * 4 + 4), r.evaluations


def test_a_1e7_relative_formula_error_fails_against_the_engine():
    """1 - y**2 written as 1.0000001 - y**2: within finite differences' 1e-5, 1000x over the exact rule."""
    r = gv.check_layer(Dense(const=1.0 + 1e-7), (5, 6))
    assert r.status == "fail" and r.reference == "reference", r
    fd = gv.check_layer(Dense(const=1.0 + 1e-7), (5, 6), against="fd")
    assert fd.passed  # what finite differences alone said: the error is below their resolution


def test_a_0p1_percent_error_in_one_of_576_weights_is_caught_in_20_of_20_seeds():
    """The issue's regression: default check_layer ran fast mode and caught this in 12 of 20 seeds."""
    caught = 0
    for seed in range(20):
        rng = np.random.default_rng(100 + seed)
        idx = (int(rng.integers(24)), int(rng.integers(24)))
        layer = Dense(24, 24, seed=seed, bad=(idx, 1.001))
        r = gv.check_layer(layer, (3, 24), seed=seed)
        caught += r.status == "fail" and r.worst.input == "W" and r.worst.index == idx
    assert caught == 20


def test_against_fd_still_runs_finite_differences():
    r = gv.check_layer(Dense(), (5, 6), against="fd")
    assert r.passed and r.reference == "fd"


def test_the_traced_run_leaves_the_layer_as_the_user_left_it():
    layer = Dense()
    W_before = layer.params["W"]
    gv.check_layer(layer, (5, 6))
    assert layer.params["W"] is W_before and isinstance(layer.params["W"], np.ndarray)
    assert isinstance(layer.x, np.ndarray) and isinstance(layer.y, np.ndarray)


def test_a_forward_leaving_the_trace_falls_back_to_finite_differences_and_says_why():
    class Leaky(Dense):
        def forward(self, x):
            h = np.asarray(x @ self.params["W"])  # leaves the trace: the engine cannot follow
            self.x = x
            self.y = np.tanh(h + self.params["b"])
            return self.y

    r = gv.check_layer(Leaky(), (5, 6))
    assert r.passed and r.reference == "fd", r
    assert any("declined" in w and "test_exact_references.py" in w for w in r.warnings), r.warnings


def test_a_preallocated_output_falls_back_with_its_reason():
    def fn(x):
        out = np.zeros(x.shape)
        for i in range(x.shape[0]):
            out[i] = np.sin(x[i])
        return out

    r = gv.check(fn, np.linspace(-1, 1, 5), vjp=lambda g, x: g * np.cos(x))
    assert r.passed and r.reference == "fd"
    assert any("declined" in w for w in r.warnings)


def test_a_broken_engine_rule_is_caught_by_finite_differences(monkeypatch):
    """A wrong VJP in the engine itself is never a silent pass: finite differences refute it."""
    from gradverify.engine import vjps

    rules = vjps.VJPS["tanh"]
    monkeypatch.setitem(vjps.VJPS, "tanh", (lambda g, ans, x: rules[0](g, ans, x) * 1.01,))
    r = gv.check_layer(Dense(), (5, 6))
    assert r.passed and r.reference == "fd", r  # the layer is right; the verdict rests on finite differences
    assert any("disagrees with finite differences" in w for w in r.warnings), r.warnings
    both = gv.check_layer(Dense(), (5, 6), against=("reference", "fd"))
    assert both.status == "unverified" and not both.passed, both
    assert any("references disagree" in w for w in both.warnings)


def test_against_is_validated():
    with pytest.raises(SpecError, match="against"):
        gv.check_layer(Dense(), (2, 6), against="magic")
    with pytest.raises(SpecError, match="auto"):
        gv.check_layer(Dense(), (2, 6), against=("auto", "fd"))


def test_against_a_framework_that_does_not_apply_falls_back_and_says_so():
    r = gv.check_layer(Dense(), (5, 6), against="torch")
    assert r.passed and r.reference == "fd"
    assert any("does not apply" in w for w in r.warnings), r.warnings


# -- property-tested layers ---------------------------------------------------------------------------

class StraightThroughClip:
    """clip(x, -3, 3) whose backward passes dy straight through: wrong only where |x| > 3."""

    params: dict = {}

    def forward(self, x):
        return np.clip(x, -3.0, 3.0)

    def backward(self, dy):
        self.grads = {}
        return dy.copy()


def test_one_standard_normal_draw_misses_the_clip_bug():
    assert gv.check_layer(StraightThroughClip(), (4, 3)).passed


def test_examples_find_and_shrink_the_clip_bug():
    r = gv.check_layer(StraightThroughClip(), (4, 3), examples=40)
    assert r.status == "fail", r
    x = np.asarray(r.counterexample["x"])
    assert np.any(np.abs(x) > 3.0), x
    assert r.worst.index in [tuple(i) for i in np.argwhere(np.abs(x) > 3.0)]
    assert "counterexample" in str(r)


def test_examples_pass_a_right_layer_and_count_them():
    r = gv.check_layer(Dense(), (3, 6), examples=8)
    assert r.passed and r.examples == 8, r


def test_examples_validated():
    with pytest.raises(SpecError, match="examples"):
        gv.check_layer(Dense(), (3, 6), examples=0)


# -- frameworks: autodiff of the primal --------------------------------------------------------------

def _torch_tanh_function(factor: float):
    torch = pytest.importorskip("torch")

    class TanhLinear(torch.autograd.Function):
        @staticmethod
        def forward(ctx, x, w):
            y = torch.tanh(x @ w)
            ctx.save_for_backward(x, w, y)
            return y

        @staticmethod
        def backward(ctx, g):
            x, w, y = ctx.saved_tensors
            d = g * (1 - y * y)
            return d @ w.T, x.T @ d * factor

    return torch, TanhLinear


def test_torch_function_is_checked_against_autograd_of_its_forward():
    torch, ok = _torch_tanh_function(1.0)
    x, w = torch.randn(4, 3, dtype=torch.float64), torch.randn(3, 5, dtype=torch.float64)
    r = gv.check(ok.apply, (x, w))
    assert r.passed and r.reference == "torch", r
    _, bad = _torch_tanh_function(1.0 + 1e-7)
    r = gv.check(bad.apply, (x, w))
    assert r.status == "fail" and r.reference == "torch" and r.worst.input == "w", r


def test_a_torch_function_changed_between_checks_is_checked_as_it_is_now():
    # The exact reference's patch of a Function class is made once and reused (primal_functions): a class
    # whose backward or forward the user replaced since must be checked, and left, as it is now.
    torch, fn = _torch_tanh_function(1.0)
    x, w = torch.randn(4, 3, dtype=torch.float64), torch.randn(3, 5, dtype=torch.float64)
    right_backward, right_forward = fn.backward, fn.forward
    assert gv.check(fn.apply, (x, w)).passed

    def wrong_backward(ctx, g):
        gx, gw = right_backward(ctx, g)
        return gx, gw * (1 + 1e-6)

    fn.backward = staticmethod(wrong_backward)
    r = gv.check(fn.apply, (x, w))
    assert r.status == "fail" and r.reference == "torch" and r.worst.input == "w", r
    assert fn.__dict__["backward"].__func__ is wrong_backward  # restored as the user set it

    def doubled_forward(ctx, x, w):
        return 2 * right_forward(ctx, x, w)

    def doubled_backward(ctx, g):
        return right_backward(ctx, 2 * g)

    fn.forward, fn.backward = staticmethod(doubled_forward), staticmethod(doubled_backward)
    r = gv.check(fn.apply, (x, w))  # right for the new forward; against the old forward it would fail by 2x
    assert r.passed and r.reference == "torch", r
    fn.forward = staticmethod(right_forward)
    r = gv.check(fn.apply, (x, w))  # the doubled backward against the original forward: off by 2x
    assert r.status == "fail" and r.reference == "torch", r


def test_a_torch_function_inheriting_a_changed_forward_is_checked_against_it():
    # the patch of a subclass is made from its bases' methods too: a base changed between checks changes it
    torch, base = _torch_tanh_function(1.0)

    class Sub(base):
        pass

    x, w = torch.randn(4, 3, dtype=torch.float64), torch.randn(3, 5, dtype=torch.float64)
    right_backward, right_forward = base.backward, base.forward
    assert gv.check(Sub.apply, (x, w)).passed

    def doubled_forward(ctx, x, w):
        return 2 * right_forward(ctx, x, w)

    base.forward = staticmethod(doubled_forward)
    r = gv.check(Sub.apply, (x, w))  # the inherited backward against the doubled forward: off by 2x
    assert r.status == "fail" and r.reference == "torch", r
    base.backward = staticmethod(lambda ctx, g: right_backward(ctx, 2 * g))
    r = gv.check(Sub.apply, (x, w))
    assert r.passed and r.reference == "torch", r


def test_jax_custom_vjp_is_checked_against_jax_of_its_primal():
    jax = pytest.importorskip("jax")
    import jax.numpy as jnp

    def make(factor):
        @jax.custom_vjp
        def f(x):
            return jnp.sin(x) * 2.0

        f.defvjp(lambda x: (f(x), x), lambda x, g: (g * jnp.cos(x) * 2.0 * factor,))
        return f

    x = np.linspace(-1.0, 1.0, 5)
    good = gv.check(make(1.0), (x,))
    assert good.passed and good.reference == "jax", good
    bad = gv.check(make(1.0 + 1e-7), (x,))
    assert bad.status == "fail" and bad.reference == "jax", bad


def _jax_nested(kind: str, factor: float):
    """JAX code that *calls* a custom_vjp tanh (its backward scaled by ``factor``) inside ``kind`` of structure."""
    jax = pytest.importorskip("jax")
    import jax.numpy as jnp

    @jax.custom_vjp
    def act(z):
        return jnp.tanh(z)

    act.defvjp(lambda z: (jnp.tanh(z), jnp.tanh(z)), lambda t, g: (g * (1 - t ** 2) * factor,))
    inner = jax.jit(lambda z: act(z) * 2.0)

    def scan(W, x):
        h, _ = jax.lax.scan(lambda h, _: (act(h @ W), None), x, None, length=3)
        return jnp.sum(h)

    return {
        "call": lambda W, x: jnp.sum(act(x @ W)),
        "jit": lambda W, x: jnp.sum(inner(x @ W)),
        "scan": scan,
        "cond": lambda W, x: jnp.sum(jax.lax.cond(jnp.sum(x) > -1e9, act, lambda z: z, x @ W)),
        "checkpoint": lambda W, x: jnp.sum(jax.checkpoint(lambda z: act(z @ W))(x)),
        "vmap": lambda W, x: jnp.sum(jax.vmap(lambda r: act(r @ W))(x)),
    }[kind]


@pytest.mark.parametrize("kind", ["call", "jit", "scan", "cond", "checkpoint", "vmap"])
def test_jax_code_calling_a_custom_vjp_is_checked_against_jax_of_the_primal(kind):
    """A custom_vjp *inside* plain JAX code (a layer's activation): JAX differentiates its primal instead.

    A 1e-7 relative error in the rule is below what finite differences
    resolve; against the exact reference it fails (float64, rounding
    tolerance), and the correct rule passes.
    """
    rng = np.random.default_rng(0)
    W, x = rng.standard_normal((5, 5)) / 2, rng.standard_normal((3, 5))
    good = gv.check(_jax_nested(kind, 1.0), (W, x))
    assert good.passed and good.reference == "jax", good
    bad = gv.check(_jax_nested(kind, 1.0 + 1e-7), (W, x))
    assert bad.status == "fail" and bad.reference == "jax", bad
    assert gv.check(_jax_nested(kind, 1.0 + 1e-7), (W, x), against="fd").passed  # what fd alone would say


def test_a_library_custom_jvp_whose_primal_has_a_kink_falls_back_to_finite_differences_and_says_why():
    """jax.nn.softplus at exactly 0: its primal (logaddexp's max and |x|) is not differentiable there.

    The custom rule is right, the inlined primal's autodiff is not: the
    reference's own finite-difference check refutes it, the verdict rests
    on finite differences (a pass), and the warning names that cause
    rather than asking for a bug report.
    """
    jax = pytest.importorskip("jax")
    import jax.numpy as jnp

    r = gv.check(lambda x: jnp.sum(jnp.sin(jax.nn.softplus(x)) * 1.3), (np.zeros((3, 5)),))
    assert r.passed and r.reference == "fd", r
    assert any("custom-derivative function inside the code may not be differentiable" in w for w in r.warnings), \
        r.warnings


def test_jax_custom_jvp_inside_code_is_checked_and_plain_jax_keeps_finite_differences():
    jax = pytest.importorskip("jax")
    import jax.numpy as jnp

    @jax.custom_jvp
    def square(z):
        return z * z

    square.defjvp(lambda p, t: (square(p[0]), 2.0 * p[0] * t[0] * (1.0 + 1e-7)))
    x = np.linspace(-1.0, 1.0, 7)
    bad = gv.check(lambda x: jnp.sum(square(x) * 3.0), (x,))
    assert bad.status == "fail" and bad.reference == "jax", bad
    plain = gv.check(lambda x: jnp.sum(jnp.sin(x) ** 2), (x,))
    assert plain.passed and plain.reference == "fd", plain
    assert not any("declined" in w for w in plain.warnings), plain.warnings


@pytest.mark.parametrize("compiled", [False, True], ids=["eager", "tf.function"])
def test_tensorflow_code_calling_a_custom_gradient_is_checked_against_tensorflow_of_the_primal(compiled):
    """A tf.custom_gradient *inside* TensorFlow code: TensorFlow differentiates its primal instead.

    As for JAX: a 1e-7 relative error in the hand-written gradient fails
    against the exact reference (float64 rounding tolerance); the correct
    one passes; plain TensorFlow code keeps finite differences, silently.
    """
    pytest.importorskip("tensorflow", reason='tensorflow not installed (pip install ".[tensorflow]")')
    from gradverify.backends.tensorflow import import_tensorflow

    tf = import_tensorflow()

    def loss_of(factor):
        @tf.custom_gradient
        def act(z):
            t = tf.tanh(z)
            return t, lambda g: g * (1 - t * t) * factor

        def loss(W, x):
            return tf.reduce_sum(act(x @ W))

        return tf.function(loss) if compiled else loss

    rng = np.random.default_rng(0)
    W, x = tf.constant(rng.standard_normal((5, 5)) / 2), tf.constant(rng.standard_normal((3, 5)))
    good = gv.check(loss_of(1.0), (W, x))
    assert good.passed and good.reference == "tensorflow", good
    bad = gv.check(loss_of(1.0 + 1e-7), (W, x))
    assert bad.status == "fail" and bad.reference == "tensorflow", bad
    plain = gv.check(lambda W, x: tf.reduce_sum(tf.tanh(x @ W)), (W, x))
    assert plain.passed and plain.reference == "fd" and not any("declined" in w for w in plain.warnings), plain
    assert not tf.config.functions_run_eagerly()  # the reference's scope was left


def test_pytensor_op_from_graph_is_checked_against_pytensor_of_its_inner_graph():
    """An OpFromGraph's custom pullback is the gradient under test; its inner graph, inlined, the reference."""
    pytest.importorskip("pytensor", reason='pytensor not installed (pip install ".[pytensor]")')
    import pytensor.tensor as pt
    from pytensor.compile.builders import OpFromGraph

    def loss_of(factor):
        z = pt.dvector("z")
        op = OpFromGraph([z], [pt.tanh(z)], pullback=lambda i, o, g: [g[0] * (1 - o[0] ** 2) * factor])
        return lambda a: pt.sum(op(a) * 2.0)

    x = np.linspace(-0.7, 1.3, 5)  # not symmetric: the loss is far from zero
    good = gv.check(loss_of(1.0), (x,))
    assert good.passed and good.reference == "pytensor", good
    bad = gv.check(loss_of(1.0 + 1e-7), (x,))
    assert bad.status == "fail" and bad.reference == "pytensor", bad
    plain = gv.check(lambda a: pt.sum(pt.tanh(a) * 2.0), (x,))
    assert plain.passed and plain.reference == "fd" and not any("declined" in w for w in plain.warnings), plain


@pytest.mark.parametrize("framework", ["torch", "jax"])
def test_float32_function_with_vjp_is_checked_in_float64_against_its_framework(framework):
    """A user ``vjp=`` of float32 code: its float64 run gets a float64 cotangent, and autodiff is the reference.

    Before, the float64 pass of the vjp was handed the cotangent cast to the
    float32 of the last output recorded, so a correct vjp failed against the
    exact reference by float32 rounding (4.6e-8 relative against 1.3e-9); and
    torch code with ``vjp=`` that calls no custom Function was not checked
    against torch autograd at all.
    """
    lib = pytest.importorskip(framework)
    if framework == "jax":
        import jax.numpy as mod

        as_array = mod.asarray
    else:
        mod, as_array = lib, lib.tensor

    def vjp_of(factor):
        return lambda g, x: (g * 3.0 * (mod.cos(x) * x + mod.sin(x)) * factor,)

    x = as_array(np.linspace(-1.0, 1.0, 6).astype(np.float32))
    good = gv.check(lambda x: 3.0 * mod.sin(x) * x, (x,), vjp=vjp_of(1.0))
    assert good.passed and good.reference == framework, good
    bad = gv.check(lambda x: 3.0 * mod.sin(x) * x, (x,), vjp=vjp_of(1.0 + 1e-6))
    assert bad.status == "fail" and bad.reference == framework, bad


def _attention(torch, wrong: str | None):
    """A row-normalised attention whose row sums accumulate in float32 even for float64 inputs."""

    class Attention(torch.autograd.Function):
        @staticmethod
        def forward(ctx, q, k, v):
            e = torch.exp(q @ k.T)
            rs = torch.zeros(e.shape[0])  # float32: the default dtype, not the inputs'
            rs += e.sum(1)
            p = e / rs[:, None]
            ctx.save_for_backward(q, k, v, p)
            return p @ v

        @staticmethod
        def backward(ctx, g):
            q, k, v, p = ctx.saved_tensors
            dp = g @ v.T
            ds = p * dp if wrong == "dropped term" else p * (dp - (dp * p).sum(1, keepdim=True))
            dv = p.T @ g
            if wrong == "one element":
                dv = dv.clone()
                dv[1, 2] *= 1.001
            return ds @ k, ds.T @ q, dv

    return Attention


@pytest.mark.parametrize("against", ["auto", "fd"])
@pytest.mark.parametrize("mode", ["full", "fast", "auto"])
def test_noisy_forward_right_backward_is_never_a_failure(against, mode):
    """The issue's regression: float32 row sums in a float64 forward were 6 false alarms out of 6."""
    torch = pytest.importorskip("torch")
    gen = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(4, 3, dtype=torch.float64, generator=gen) for _ in range(3))
    r = gv.check(_attention(torch, None).apply, (q, k, v), against=against, mode=mode)
    assert r.status in ("pass", "unverified"), r
    assert any("noisy" in w for w in r.warnings) or r.reference == "torch", r.warnings


@pytest.mark.parametrize("against", ["auto", "fd"])
@pytest.mark.parametrize("mode", ["full", "fast"])
def test_noisy_forward_wrong_backward_still_fails(against, mode):
    torch = pytest.importorskip("torch")
    gen = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(4, 3, dtype=torch.float64, generator=gen) for _ in range(3))
    r = gv.check(_attention(torch, "dropped term").apply, (q, k, v), against=against, mode=mode)
    assert r.status == "fail", r


def test_noisy_forward_one_element_error_is_caught_by_the_exact_reference():
    torch = pytest.importorskip("torch")
    gen = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(4, 3, dtype=torch.float64, generator=gen) for _ in range(3))
    r = gv.check(_attention(torch, "one element").apply, (q, k, v))
    assert r.status == "fail" and r.reference == "torch" and (r.worst.input, r.worst.index) == ("v", (1, 2)), r


class Conv2DStyle:
    """A conv layer in the style of public numpy layer libraries (written here, not copied).

    NHWC input, ``parameters``/``gradients`` dicts, every forward's input
    appended to a list that ``backward`` walks, gradients accumulated with
    ``+=``, an im2col built by fancy indexing, ``np.pad`` and ``np.einsum``.
    ``bad=(index, factor)`` scales one element of dW.
    """

    def __init__(self, in_ch=8, out_ch=8, k=3, seed=0, bad=None):
        rng = np.random.default_rng(seed)
        self.parameters = {"W": rng.standard_normal((k, k, in_ch, out_ch)) / (k * np.sqrt(in_ch)),
                           "b": np.zeros((1, 1, 1, out_ch))}
        self.gradients = {n: np.zeros_like(p) for n, p in self.parameters.items()}
        self.X, self.k, self.bad = [], k, bad

    def _cols(self, X):
        k = self.k
        Xp = np.pad(X, ((0, 0), (1, 1), (1, 1), (0, 0)))
        h, w = X.shape[1], X.shape[2]
        i = np.arange(h)[:, None, None, None] + np.arange(k)[None, None, :, None]
        j = np.arange(w)[None, :, None, None] + np.arange(k)[None, None, None, :]
        return Xp[:, i, j, :]  # (n, h, w, k, k, c)

    def forward(self, X):
        self.X.append(X)
        z = np.einsum("nhwabc,abcd->nhwd", self._cols(X), self.parameters["W"]) + self.parameters["b"]
        return np.tanh(z)

    def backward(self, dY):
        dXs = []
        for X in self.X:
            cols = self._cols(X)
            y = np.tanh(np.einsum("nhwabc,abcd->nhwd", cols, self.parameters["W"]) + self.parameters["b"])
            dz = dY * (1 - y ** 2)
            dW = np.einsum("nhwabc,nhwd->abcd", cols, dz)
            if self.bad is not None:
                dW[self.bad[0]] *= self.bad[1]
            self.gradients["W"] += dW
            self.gradients["b"] += dz.sum(axis=(0, 1, 2), keepdims=True)
            dcols = np.einsum("nhwd,abcd->nhwabc", dz, self.parameters["W"])
            dXp = np.zeros((X.shape[0], X.shape[1] + 2, X.shape[2] + 2, X.shape[3]))
            for a in range(self.k):
                for b_ in range(self.k):
                    dXp[:, a:a + X.shape[1], b_:b_ + X.shape[2], :] += dcols[:, :, :, a, b_, :]
            dXs.append(dXp[:, 1:-1, 1:-1, :])
        return dXs[0] if len(dXs) == 1 else dXs


def test_a_library_style_conv_layer_runs_unchanged_against_the_engine():
    layer = Conv2DStyle()
    r = gv.check_layer(layer, (2, 5, 5, 8), params_attr="parameters", grads_attr="gradients")
    assert r.passed and r.reference == "reference", r
    assert any("X (list" in w for w in r.warnings), r.warnings  # its growing input list was reset, and named
    assert layer.X == [] and not layer.gradients["W"].any()


def test_a_0p1_percent_error_in_one_of_576_conv_weights_is_caught_in_20_of_20_seeds():
    """The issue's case: a 3x3x8x8 kernel (576 weights), one element off by 0.1%, default check."""
    named = 0
    for seed in range(20):
        rng = np.random.default_rng(seed)
        idx = tuple(int(rng.integers(n)) for n in (3, 3, 8, 8))
        r = gv.check_layer(Conv2DStyle(seed=seed, bad=(idx, 1.001)), (2, 5, 5, 8), seed=seed,
                           params_attr="parameters", grads_attr="gradients")
        named += r.status == "fail" and r.worst.input == "W" and r.worst.index == idx
    assert named == 20


@pytest.mark.parametrize("subgradient", [0.0, 0.5, 1.0])
def test_every_valid_subgradient_at_a_kink_passes_against_the_engine(subgradient):
    """relu'(0) in [0, 1]: the engine's own choice (0.5 at a tie of maximum) is one; the others are named kinks."""
    def forward(x):
        return np.maximum(x, 0.0), x

    def backward(dout, x, bad=None):
        return (dout * (x > 0) + dout * (x == 0) * subgradient,)

    x = np.array([[-1.5, 0.0, 2.0], [0.0, 0.7, -0.3]])
    r = gv.check_pair(forward, backward, (x,))
    assert r.passed and r.reference == "reference", r
    if subgradient != 0.5:
        assert r.status == "nondiff" and sorted(loc.index for loc in r.nondifferentiable) == [(0, 1), (1, 0)]
    bad = gv.check_pair(forward, lambda d, x: (d * (x > 0) + d * (x == 0) * 2.0,), (x,))
    assert bad.status == "fail" and bad.worst.index in {(0, 1), (1, 0)}


def test_rounding_residue_of_a_flat_function_is_not_a_failure_against_the_engine():
    """(x + e^x) - (e^x + x): the gradient is 0, computed as a difference of equal terms (~1e-16 residue)."""
    def fn(x):
        return (x + np.exp(x)) - (np.exp(x) + x)

    x = np.array([0.3, 0.7, 1.1])
    r = gv.check(fn, [x], vjp=lambda d, x: ((d + d * np.exp(x)) - d - d * np.exp(x),))
    assert r.passed and r.reference == "reference", r
    assert gv.check(fn, [x], vjp=lambda d, x: (d * 1e-6,)).status == "fail"


def test_saturated_sigmoid_by_another_correct_formula_passes_against_the_engine():
    """s (1 - s) and e^-x / (1 + e^-x)^2 differ by rounding of up to 1e-7 relative at |x| ~ 20."""
    def fn(x):
        return 1.0 / (1.0 + np.exp(-x))

    def vjp(d, x):
        e = np.exp(-x)
        return (d * e / (1.0 + e) ** 2,)

    x = np.array([[-22.0, -18.5, 19.0], [20.5, 24.0, -16.0]])
    assert gv.check(fn, [x], vjp=vjp).passed
