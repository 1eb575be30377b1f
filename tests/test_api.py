"""The public checks: behaviour a user relies on beyond the corpora."""

import json
import subprocess
import sys

import numpy as np
import pytest

import gradverify as gv


class Tanh:
    """A parameter-free layer whose backward ignores dy when bug='ignore_dy'."""

    def __init__(self, bug=None):
        self.params = {}
        self.bug = bug

    def forward(self, x):
        self.y = np.tanh(x)
        return self.y

    def backward(self, dy):
        if self.bug == "ignore_dy":
            return 1 - self.y**2
        return dy * (1 - self.y**2)


def test_random_cotangent_catches_backward_that_ignores_dy():
    assert gv.check_layer(Tanh(), (3, 4)).passed
    r = gv.check_layer(Tanh("ignore_dy"), (3, 4))
    assert not r.passed and r.worst.input == "x"


def test_backward_runs_right_after_its_forward():
    class Stateful:
        """Correct only if backward uses the cache of the forward just before it."""

        params = {}

        def forward(self, x):
            self.x = x
            return x**3

        def backward(self, dy):
            return 3 * self.x**2 * dy

    assert gv.check_layer(Stateful(), (5,)).passed


def test_check_names_inputs_by_parameter_names_and_dicts():
    def f(a, b):
        return a * np.sin(b)

    def vjp(d, a, b):
        return d * np.sin(b), d * a * np.cos(b) * (1 + 1e-3)  # b is 0.1% off

    x = [np.array([0.5, 1.5]), np.array([0.3, -0.7])]
    r = gv.check(f, x, vjp=vjp)
    assert not r.passed and r.worst.input == "b"
    r2 = gv.check(f, {"a": x[0], "b": x[1]}, vjp=vjp)
    assert not r2.passed and r2.worst.input == "b"
    assert [s.name for s in r.inputs] == ["a", "b"]


def test_integer_inputs_are_constants_and_said_so():
    def gather(w, idx):
        return w[idx]

    def vjp(d, w, idx):
        g = np.zeros_like(w)
        np.add.at(g, idx, d)
        return g, None

    r = gv.check(gather, [np.arange(5.0), np.array([0, 2, 2])], vjp=vjp)
    assert r.passed
    assert any("constant" in w for w in r.warnings)
    with pytest.raises(gv.NoDifferentiableInputs):
        gv.check(gather, [np.arange(5), np.array([0, 2])], vjp=vjp)


def test_assert_wrappers_raise_gradient_mismatch_with_the_result():
    with pytest.raises(gv.GradientMismatch) as exc:
        gv.assert_layer(Tanh("ignore_dy"), (2, 3))
    assert isinstance(exc.value, AssertionError)
    assert exc.value.result.worst.input == "x"
    assert "'x'[" in str(exc.value) and "seed=0" in str(exc.value)


def test_result_is_json_ready_and_reports_its_cost():
    r = gv.check_layer(Tanh(), (2, 3), against="fd")
    d = json.loads(json.dumps(r.to_dict()))
    assert d["mode"] == "full" and d["evaluations"] == r.evaluations > 4 * 6 and d["reference"] == "fd"
    # against the exact reference: one traced forward and backward, and its own check by projections
    e = json.loads(json.dumps(gv.check_layer(Tanh(), (2, 3)).to_dict()))
    assert e["reference"] == "reference" and 0 < e["evaluations"] < d["evaluations"]
    assert set(d["worst"]) >= {"input", "index", "analytic", "numeric", "abs_err", "rel_err"}


def test_nondeterministic_forward_is_an_error_not_a_pass():
    class Noisy:
        """Draws from a fresh OS-seeded generator: no state to capture and replay."""

        params = {}

        def forward(self, x):
            self.mask = np.random.default_rng().random(x.shape) > 0.5
            return x * self.mask

        def backward(self, dy):
            return dy * self.mask

    # 64 elements: a fresh mask of 4 elements repeats itself with probability 1/16 per re-run, and the check
    # re-runs the forward once and the backward once (both unlucky: 1/256, seen in CI); 64 make it 2**-128
    with pytest.raises(gv.NondeterministicError, match="nondeterministic"):
        gv.check_layer(Noisy(), (64,))


def test_kink_is_nondiff_not_failure_but_invalid_subgradient_fails():
    x = np.array([-1.0, 0.0, 2.0])
    ok = gv.check(lambda x: np.maximum(x, 0), [x], vjp=lambda d, x: (d * (x > 0),))
    assert ok.passed and ok.status == "nondiff"
    assert [loc.index for loc in ok.nondifferentiable] == [(1,)]
    bad = gv.check(lambda x: np.maximum(x, 0), [x], vjp=lambda d, x: (d * (x > 0) + d * (x == 0) * 3.0,))
    assert not bad.passed and bad.worst.index == (1,)


def test_options_are_validated():
    with pytest.raises(gv.SpecError, match="mode"):
        gv.check_layer(Tanh(), (2,), mode="bogus")
    with pytest.raises(gv.SpecError, match="seed"):
        gv.check_layer(Tanh(), (2,), seed=-1)
    with pytest.raises(gv.SpecError, match="input_shape"):
        gv.check_layer(Tanh())


def test_import_gradverify_imports_no_framework():
    code = (
        "import sys, gradverify, gradverify.numeric, gradverify.engine, gradverify.compare;"
        "bad = [m for m in ('torch', 'jax', 'jaxlib') if m in sys.modules];"
        "print(bad); sys.exit(1 if bad else 0)"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_pair_with_options_dict_needs_no_gradient_for_it():
    # The common pair shape forward(x, w, conv_param) -> (out, cache) whose
    # backward returns gradients for the arrays only.
    def forward(x, w, param):
        out = np.tanh(x * w * param["scale"])
        return out, (x, w, param, out)

    def backward(dout, cache):
        x, w, param, out = cache
        dz = dout * (1 - out**2) * param["scale"]
        return dz * w, dz * x

    x, w = np.linspace(-1, 1, 4), np.linspace(0.5, 2, 4)
    r = gv.check_pair(forward, backward, (x, w, {"scale": 1.5}))
    assert r.passed and [s.name for s in r.inputs] == ["x", "w", "param"]
    assert not r.inputs[2].checked


def test_function_identically_zero_with_rounding_residue_in_its_gradient():
    # Found by the engine's property test: e - e. The true gradient is 0; a
    # backward computing it as a difference of equal terms leaves ~1e-16.
    def fn(x):
        return (x + np.exp(x)) - (np.exp(x) + x)

    def vjp(d, x):
        return ((d + d * np.exp(x)) - d - d * np.exp(x),)

    x = np.array([0.3, 0.7, 1.1])
    assert gv.check(fn, [x], vjp=vjp).passed
    # ... but a real gradient where the function is flat is still a failure
    r = gv.check(fn, [x], vjp=lambda d, x: (d * 0.5,))
    assert not r.passed and r.worst.input == "x"


class Dropout:
    """Inverted dropout drawing its mask from its own Generator."""

    def __init__(self, p=0.5, seed=0, forget_mask=False):
        self.params = {}
        self.p = p
        self.rng = np.random.default_rng(seed)
        self.forget_mask = forget_mask

    def forward(self, x):
        self.mask = (self.rng.random(x.shape) >= self.p) / (1 - self.p)
        return x * self.mask

    def backward(self, dy):
        return dy if self.forget_mask else dy * self.mask


def test_stochastic_layer_is_checkable_and_its_stream_untouched():
    layer = Dropout()
    before = layer.rng.bit_generator.state
    r = gv.check_layer(layer, (4, 5))
    assert r.passed and any("random" in w for w in r.warnings)
    assert layer.rng.bit_generator.state == before
    bad = gv.check_layer(Dropout(forget_mask=True), (4, 5))
    assert not bad.passed and bad.worst.input == "x"


def test_global_numpy_random_state_is_replayed_and_restored():
    class GlobalDropout:
        params = {}

        def forward(self, x):
            self.mask = (np.random.rand(*x.shape) >= 0.5) * 2.0
            return x * self.mask

        def backward(self, dy):
            return dy * self.mask

    np.random.seed(7)
    expected = np.random.get_state()[1].copy()
    assert gv.check_layer(GlobalDropout(), (3, 3)).passed
    assert np.array_equal(np.random.get_state()[1], expected)


def test_nondeterministic_backward_is_an_error():
    class FlakyBackward:
        params = {}

        def __init__(self):
            self.calls = 0

        def forward(self, x):
            return 2 * x

        def backward(self, dy):
            self.calls += 1
            return dy * (2.0 + 0.01 * (self.calls % 2))

    with pytest.raises(gv.NondeterministicError, match="backward"):
        gv.check_layer(FlakyBackward(), (3,))


def test_failing_verdict_carries_the_taylor_second_opinion():
    class OffByOnePermille(Tanh):
        def backward(self, dy):
            dx = super().backward(dy)
            dx[0, 1] *= 1.001
            return dx

    r = gv.check_layer(OffByOnePermille(), (2, 3))
    assert not r.passed and r.worst.index == (0, 1)
    # the remainder converges at rate ~1 along the wrong element (2 if right)
    assert r.taylor["rate"] == pytest.approx(1.0, abs=0.15)
    assert "Taylor" in str(r) and r.to_dict()["taylor"]["where"] == "'x'[0, 1]"
    assert gv.check_layer(Tanh(), (2, 3)).taylor is None  # clear passes need no second opinion


def test_a_probe_direction_held_while_its_levels_run_is_drawn_once(monkeypatch):
    # Directions are not kept (KEEP_DIRECTION_BYTES 0); x's fit the memory a probe may hold while its levels
    # run, w's do not. A held direction serves its tolerance too: one draw per probe of x (there were two: the
    # tolerance read it first), while each probe of w is drawn again for every read, chunk by chunk.
    from gradverify import api

    rng = np.random.default_rng(3)
    x, w = rng.standard_normal((5, 20)), rng.standard_normal((20, 30)) / 4
    draws = {}
    plain = api._Direction._generator

    def counted(self):
        draws[self.shape] = draws.get(self.shape, 0) + 1
        return plain(self)

    monkeypatch.setattr("gradverify.api.KEEP_DIRECTION_BYTES", 0)
    monkeypatch.setattr(api._Direction, "_generator", counted)
    r = gv.check(lambda x, w: np.tanh(x @ w), [x, w], vjp=lambda dy, x, w: (
        (dy * (1 - np.tanh(x @ w) ** 2)) @ w.T, x.T @ (dy * (1 - np.tanh(x @ w) ** 2))),
        mode="fast", against="fd", seed=1)
    assert r.passed
    assert draws[x.shape] == api.FAST_PROBES  # held: once each
    assert draws[w.shape] > 2 * api.FAST_PROBES  # drawn on demand: its plan, its tolerance, each displaced point


@pytest.mark.parametrize("bug", [0.0, 1e-3], ids=["right", "one weight wrong"])
def test_fast_mode_probes_are_the_same_held_or_drawn_again(monkeypatch, bug):
    # A probe direction over KEEP_DIRECTION_BYTES is drawn again from its own stream whenever it is read; a
    # small one is held. Either way a seed gives the same directions, so the same verdict number for number
    # (and, with a wrong weight, the same element located by bisection).
    rng = np.random.default_rng(2)
    x, w = rng.standard_normal((5, 20)), rng.standard_normal((20, 30)) / 4

    def f(x, w):
        return np.tanh(x @ w)

    def vjp(dy, x, w):
        d = dy * (1 - np.tanh(x @ w) ** 2)
        gw = x.T @ d
        gw[3, 17] += bug * abs(gw).max()
        return d @ w.T, gw

    got = []
    for keep in (0, 2**30):
        monkeypatch.setattr("gradverify.api.KEEP_DIRECTION_BYTES", keep)
        d = gv.check(f, [x, w], vjp=vjp, mode="fast", against="fd", seed=7).to_dict()
        d.pop("seconds", None)
        got.append(d)
    assert got[0] == got[1]
    assert got[0]["passed"] == (bug == 0.0), got[0]
    if bug:
        assert got[0]["worst"]["input"] == "w" and tuple(got[0]["worst"]["index"]) == (3, 17), got[0]
