"""The classes of operators the sweep over PyTorch's OpInfo database met (issue 12, point 9).

Each test is one class at its cause, with the operator or a minimal
stand-in (``benchmarks/operator_sweep.py`` runs the whole database). Where
a numerical tolerance is stated it is gradverify's default for the dtype
unless the test says otherwise.
"""

from __future__ import annotations

import numpy as np
import pytest

import gradverify

torch = pytest.importorskip("torch")


def f64(*shape, seed=0, low=-1.0, high=1.0):
    g = torch.Generator().manual_seed(seed)
    return (low + (high - low) * torch.rand(*shape, generator=g, dtype=torch.float64))


# -- a 0-d (scalar) tensor among the inputs, in fast mode ---------------------

@pytest.mark.parametrize("op", [torch.atan2, torch.mul, torch.pow])
def test_zero_dim_input_in_fast_mode(op):
    x = f64(3, 4, low=0.5, high=1.5)
    r = gradverify.check(op, [x, torch.tensor(2.0, dtype=torch.float64)], mode="fast")
    assert r.status == "pass", r
    assert r.mode == "fast"


def test_zero_dim_input_wrong_gradient_fails_in_fast_mode():
    class Bad(torch.autograd.Function):
        @staticmethod
        def forward(ctx, x, y):
            ctx.save_for_backward(x, y)
            return x * y

        @staticmethod
        def backward(ctx, g):
            x, y = ctx.saved_tensors
            return g * y, 1.5 * (g * x).sum()  # the scalar's gradient is 1.5x too large

    r = gradverify.check(Bad.apply, [f64(5), torch.tensor(2.0, dtype=torch.float64)], mode="fast", against="fd")
    assert r.status == "fail" and r.worst.input == "y"


# -- empty inputs and outputs: nothing to compare passes trivially, and says so ---

@pytest.mark.parametrize("mode", ["auto", "fast"])
def test_empty_input_passes_trivially_with_a_warning(mode):
    r = gradverify.check(torch.round, [torch.zeros(1, 0, 3, dtype=torch.float64)], mode=mode)
    assert r.status == "pass"
    assert any("nothing to compare" in w for w in r.warnings), r.warnings


def test_empty_output_passes_trivially_and_an_empty_input_beside_others_is_checked():
    r = gradverify.check(lambda a: a[:0] * 2, [f64(3)])
    assert r.status == "pass" and any("nothing to compare" in w for w in r.warnings)
    r = gradverify.check(lambda a, b: a.sum() + torch.sin(b), [torch.zeros(0, dtype=torch.float64), f64(4)],
                         mode="fast")
    assert r.status == "pass"


def test_empty_numpy_input_is_still_refused():
    with pytest.raises(gradverify.GradVerifyError):
        gradverify.check(lambda x: 2 * x, [np.zeros(0)], vjp=lambda d, x: (2 * d,))


# -- outputs that autograd does not differentiate; inputs the caller did not mark ----

def _norm_with_stats(x, weight, bias, running_mean, running_var):
    """batch_norm's shape: the result, and beside it statistics computed without grad."""
    out = torch.nn.functional.batch_norm(x, running_mean, running_var, weight, bias, training=True, momentum=0.5)
    with torch.no_grad():
        mean, var = x.mean(0), x.var(0)
    return out, mean, var


def test_outputs_without_grad_are_left_out_and_unmarked_inputs_are_constants():
    x, w, b = (f64(4, 3, seed=s).requires_grad_() for s in range(3))
    w, b = w[0].detach().requires_grad_(), b[0].detach().requires_grad_()
    rm, rv = torch.zeros(3, dtype=torch.float64), torch.ones(3, dtype=torch.float64)  # no requires_grad
    r = gradverify.check(_norm_with_stats, [x, w, b, rm, rv])
    assert r.status == "pass", r
    assert {"running_mean", "running_var"} <= set(r.to_dict().get("constants", ["running_mean", "running_var"]))


def test_outputs_without_grad_left_out_still_catch_a_wrong_backward():
    class Scale(torch.autograd.Function):
        @staticmethod
        def forward(ctx, x):
            return 2 * x

        @staticmethod
        def backward(ctx, g):
            return 2.2 * g  # 10% off

    def f(x):
        with torch.no_grad():
            stat = x.mean()
        return Scale.apply(x), stat

    r = gradverify.check(f, [f64(5).requires_grad_()], against="fd")
    assert r.status == "fail" and r.worst.input == "x"


def test_module_outputs_without_grad_are_left_out():
    class WithStats(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.lin = torch.nn.Linear(3, 2).double()

        def forward(self, x):
            y = self.lin(x)
            with torch.no_grad():
                stats = y.var(0)
            return y, stats

    for mode in ("full", "fast"):
        r = gradverify.check_layer(WithStats(), inputs=f64(4, 3), mode=mode)
        assert r.status == "pass", r


# -- a gradient returned as a ZeroTensor ----------------------------------------

class _IgnoresC(torch.autograd.Function):
    """2 x, whatever c: c's gradient is autograd's efficient ZeroTensor."""

    @staticmethod
    def forward(ctx, x, c):
        ctx.c_shape = c.shape
        return 2 * x

    @staticmethod
    def backward(ctx, g):
        return 2 * g, torch._efficientzerotensor(ctx.c_shape, dtype=g.dtype)


def test_zero_tensor_gradient():
    x, c = f64(4), f64(3, seed=1)
    for mode in ("full", "fast"):
        r = gradverify.check(_IgnoresC.apply, [x, c], mode=mode, against="fd")
        assert r.status == "pass", r


# -- step functions: a jump beside the point, and locally constant functions -------

@pytest.mark.parametrize("mode", ["full", "fast"])
def test_round_next_to_a_jump_is_nondiff_not_a_failure(mode):
    # 2.04739 rounds to 2.047; the jump at 2.0475 is 1.1e-4 away, inside the first finite-difference step
    x = torch.tensor([2.047386382824099, 0.3123, -1.2], dtype=torch.float64)
    r = gradverify.check(lambda x: torch.round(x, decimals=3), [x], mode=mode)
    assert r.status == "nondiff", r
    assert r.passed


def test_a_wrong_gradient_beside_a_jump_still_fails_where_the_function_is_smooth():
    class RoundPlusSin(torch.autograd.Function):
        @staticmethod
        def forward(ctx, x):
            ctx.save_for_backward(x)
            return torch.round(x, decimals=3) + torch.sin(x)

        @staticmethod
        def backward(ctx, g):
            (x,) = ctx.saved_tensors
            return g * torch.cos(x) * 1.01  # 1% off, everywhere

    x = torch.tensor([2.047386382824099, 0.3123, -1.2], dtype=torch.float64)
    r = gradverify.check(RoundPlusSin.apply, [x], mode="full", against="fd")
    assert r.status == "fail", r


def test_floor_is_settled_at_once_as_locally_constant():
    x = f64(20, 20, low=-5, high=5)
    r = gradverify.check(torch.floor, [x], mode="full")
    assert r.status == "pass", r
    # 400 elements: about 2 evaluations each (the screen settles a locally constant element with a zero
    # gradient at once; 16 sampled elements also run Richardson), where the step walk used to spend ~50
    # each (19,882 in all); gradcheck spends 2 each
    assert r.evaluations <= 3 * x.numel(), r.evaluations


def test_a_wrong_nonzero_gradient_of_a_step_function_fails():
    class BadFloor(torch.autograd.Function):
        @staticmethod
        def forward(ctx, x):
            return torch.floor(x)

        @staticmethod
        def backward(ctx, g):
            return g  # straight-through: not floor's derivative

    x = f64(6, low=-5, high=5)
    r = gradverify.check(BadFloor.apply, [x], mode="full", against="fd")
    assert r.status == "fail", r


# -- complex inputs and outputs: torch's conjugate Wirtinger convention -----------

def _complex_sin(conjugate: bool):
    class Sin(torch.autograd.Function):
        @staticmethod
        def forward(ctx, z):
            ctx.save_for_backward(z)
            return torch.sin(z)

        @staticmethod
        def backward(ctx, g):
            (z,) = ctx.saved_tensors
            # torch's convention: grad_input = grad_output * conj(df/dz) for a holomorphic f
            return g * (torch.cos(z).conj() if conjugate else torch.cos(z))

    return Sin.apply


Z = [0.4 + 1.2j, -0.7 + 0.3j, 1.1 - 0.5j]


@pytest.mark.parametrize("mode", ["full", "fast"])
def test_complex_in_complex_out_right_backward_passes_wrong_one_fails(mode):
    z = torch.tensor(Z, dtype=torch.complex128)
    assert gradverify.check(torch.sin, [z], mode=mode).status == "pass"
    assert gradverify.check(_complex_sin(True), [z], mode=mode, against="fd").status == "pass"
    wrong = gradverify.check(_complex_sin(False), [z], mode=mode, against="fd")
    assert wrong.status == "fail", wrong


def test_complex_in_real_out_and_real_in_complex_out():
    z = torch.tensor(Z, dtype=torch.complex128)
    r = gradverify.check(lambda z: (z * z.conj()).real, [z])
    assert r.status == "pass", r
    # the real view: 'z'[k, 0] is Re z_k, 'z'[k, 1] is Im z_k
    assert {s.shape for s in r.inputs if s.name == "z"} == {(3, 2)}
    assert gradverify.check(torch.fft.rfft, [f64(6)]).status == "pass"


def test_complex_wrong_gradient_of_a_real_loss_fails():
    class AbsSquared(torch.autograd.Function):
        @staticmethod
        def forward(ctx, z):
            ctx.save_for_backward(z)
            return (z * z.conj()).real

        @staticmethod
        def backward(ctx, g):
            (z,) = ctx.saved_tensors
            return g * z  # right: 2 g z (dL/dRe + i dL/dIm)

    r = gradverify.check(AbsSquared.apply, [torch.tensor(Z, dtype=torch.complex128)], against="fd")
    assert r.status == "fail", r


# -- sparse inputs (densified for the oracle, the layout kept for the code) -------

@pytest.mark.parametrize("layout", ["coo", "csr"])
@pytest.mark.parametrize("mode", ["full", "fast"])
def test_sparse_input_keeps_its_layout_and_is_checked_on_its_pattern(layout, mode):
    s = torch.sparse_coo_tensor(torch.tensor([[0, 1, 2], [2, 0, 1]]), torch.tensor([1.5, -0.5, 2.0],
                                dtype=torch.float64), (3, 3))
    s = (s if layout == "coo" else s.to_sparse_csr()).requires_grad_()
    seen = set()

    def f(s, d):
        seen.add(s.layout)
        return torch.sparse.mm(s, d) if s.layout == torch.sparse_coo else s @ d

    r = gradverify.check(f, [s, f64(3, 2).requires_grad_()], mode=mode)
    assert r.status == "pass", r
    assert seen == {s.layout}


def test_sparse_input_wrong_gradient_fails():
    class Mm(torch.autograd.Function):
        @staticmethod
        def forward(ctx, s, d):
            ctx.save_for_backward(s, d)
            return torch.sparse.mm(s, d)

        @staticmethod
        def backward(ctx, g):
            s, d = ctx.saved_tensors
            return (g @ d.T).sparse_mask(s.coalesce()), 1.01 * (s.to_dense().T @ g)  # d's gradient 1% off

    s = torch.sparse_coo_tensor(torch.tensor([[0, 1], [1, 0]]), torch.tensor([1.5, -0.5], dtype=torch.float64),
                                (2, 2))
    r = gradverify.check(Mm.apply, [s, f64(2, 3)], against="fd")
    assert r.status == "fail" and r.worst.input == "d", r


# -- an input that is a view with a storage offset --------------------------------

@pytest.mark.parametrize("mode", ["full", "fast"])
def test_view_with_storage_offset_keeps_its_storage(mode):
    base = torch.arange(10, dtype=torch.float64) / 7
    x = base[2:8]  # storage offset 2; as_strided below addresses the storage directly
    r = gradverify.check(lambda x: torch.as_strided(x, (2, 2), (1, 2), 3) * torch.sin(x[:4].reshape(2, 2)), [x],
                         mode=mode)
    assert r.status == "pass", r
    assert torch.equal(base, torch.arange(10, dtype=torch.float64) / 7)  # the caller's storage untouched


def test_jax_complex_uses_the_same_convention():
    jax = pytest.importorskip("jax")
    jnp = jax.numpy

    def with_bwd(bwd):
        @jax.custom_vjp
        def sin(z):
            return jnp.sin(z)

        sin.defvjp(lambda z: (jnp.sin(z), z), bwd)
        return sin

    z = jnp.array(Z)
    assert gradverify.check(jnp.sin, [z]).status == "pass"
    assert gradverify.check(lambda z: jnp.abs(z) ** 2, [z]).status == "pass"
    # JAX's vjp is the transpose of the R-linear map, without conjugation: g * cos(z) is right there
    assert gradverify.check(with_bwd(lambda z, g: (g * jnp.cos(z),)), [z], against="fd").status == "pass"
    assert gradverify.check(with_bwd(lambda z, g: (g * jnp.conj(jnp.cos(z)),)), [z], against="fd").status == "fail"


# -- inputs with inf/NaN elements (an attention mask, nansum) ---------------------

@pytest.mark.parametrize("mode", ["full", "fast"])
def test_non_finite_input_elements_do_not_move_and_are_not_refused(mode):
    inf = float("inf")
    x = torch.tensor([[0.3, -inf, 1.2], [-inf, -inf, -inf]], dtype=torch.float64)
    r = gradverify.check(lambda x: torch.ops.aten._safe_softmax(x, -1), [x], mode=mode)
    assert r.status == "pass" and not r.warnings, r
    r = gradverify.check(torch.nansum, [torch.tensor([0.3, float("nan"), 1.2], dtype=torch.float64)], mode=mode)
    assert r.status == "pass" and not r.warnings, r  # NaN == NaN for the in-place-write check


def test_non_finite_numpy_input_is_still_refused():
    with pytest.raises(gradverify.GradVerifyError):
        gradverify.check(lambda x: 2 * x, [np.array([1.0, np.inf])], vjp=lambda d, x: (2 * d,))
