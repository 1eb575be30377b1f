"""Framework mutation corpus: buggy ``torch.autograd.Function`` backwards and ``jax.custom_vjp`` rules.

Every case is written once with a ``bug`` flag: the correct line and the
buggy line sit side by side, so each bug is one realistic edit of otherwise
correct code -- a wrong transpose, a missing factor, a sign, a backward that
ignores its incoming gradient, a residual saved from the wrong tensor, a
broadcast undone over the wrong axis, a 0.1% error in one element, an
approximate derivative paired with an exact forward (a ~1e-3 mismatch),
statistics treated as constants, swapped output gradients...

Each case builds ``(fn, inputs)`` for ``gradverify.check(fn, inputs)``:
torch cases take float64 tensors; JAX cases take float64 numpy arrays (the
``custom_vjp`` object names the framework; 64-bit mode is switched on only
inside the check). Neither framework is imported at module import: a
factory imports it when called, so collecting this module is free.

Each :class:`Entry` says where the bug is: the input whose gradient is
wrong (``expected_input``) and, for single-element bugs, the element
(``expected_index``). Twins are named ``<bug>__twin``.

Cost: every case is tiny (at most 32 elements per input), so a full check
of the whole corpus takes seconds.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np

__all__ = ["Entry", "ENTRIES", "BUGS", "TWINS", "TORCH", "JAX", "by_name"]


@dataclass(frozen=True)
class Entry:
    """One corpus entry (a bug or its correct twin).

    Attributes:
        name: unique id; a twin is ``<bug name>__twin``.
        description: what the bug is (for a twin: the bug it is the twin of).
        framework: ``"torch"`` or ``"jax"``.
        build: ``() -> (fn, inputs)``, seeded; imports the framework.
        is_bug: True for a bug, False for a correct twin.
        twin: the counterpart's name.
        expected_input: the input whose gradient is wrong (None for twins).
        expected_index: the wrong element for single-element bugs, else None.
    """

    name: str
    description: str
    framework: str
    build: Callable[[], tuple[Callable, Any]]
    is_bug: bool = True
    twin: str = ""
    expected_input: str | None = None
    expected_index: tuple[int, ...] | None = None

    def check(self, **kwargs):
        """``gradverify.check(fn, inputs, **kwargs)`` for this entry (imports gradverify lazily)."""
        import gradverify as gv

        fn, inputs = self.build()
        return gv.check(fn, inputs, **kwargs)


ENTRIES: list[Entry] = []


def _case(name: str, framework: str, description: str, expected_input: str,
          expected_index: tuple[int, ...] | None = None):
    """Register ``factory(bug: bool) -> (fn, inputs)`` as a bug and its twin."""

    def register(factory):
        ENTRIES.append(Entry(name, description, framework, lambda: factory(True), True, f"{name}__twin",
                             expected_input, expected_index))
        ENTRIES.append(Entry(f"{name}__twin", f"correct twin of {name}", framework, lambda: factory(False),
                             False, name))
        return factory

    return register


def _normal(seed: int, *shape: int, scale: float = 1.0) -> np.ndarray:
    return scale * np.random.default_rng(seed).standard_normal(shape)


# ---------------------------------------------------------------------------
# torch.autograd.Function
# ---------------------------------------------------------------------------

def _torch():
    import torch

    return torch


def _tt(*arrays):
    torch = _torch()
    return tuple(torch.tensor(a, dtype=torch.float64) for a in arrays)


@_case("torch_linear_transposed_dW", "torch", "dW = g.T @ x instead of x.T @ g (square W hides the shape error)", "W")
def _torch_linear(bug):
    torch = _torch()

    class Linear(torch.autograd.Function):
        @staticmethod
        def forward(ctx, x, W):
            ctx.save_for_backward(x, W)
            return x @ W

        @staticmethod
        def backward(ctx, g):
            x, W = ctx.saved_tensors
            dW = g.T @ x if bug else x.T @ g
            return g @ W.T, dW

    return Linear.apply, _tt(_normal(1, 5, 4), _normal(2, 4, 4))


@_case("torch_square_missing_factor", "torch", "d(x^2 w)/dx = x w g: the factor 2 is missing", "x")
def _torch_square(bug):
    torch = _torch()

    class SquareScale(torch.autograd.Function):
        @staticmethod
        def forward(ctx, x, w):
            ctx.save_for_backward(x, w)
            return x**2 * w

        @staticmethod
        def backward(ctx, g):
            x, w = ctx.saved_tensors
            dx = (1.0 if bug else 2.0) * x * w * g
            return dx, x**2 * g

    return SquareScale.apply, _tt(_normal(3, 3, 4), _normal(4, 3, 4))


@_case("torch_exp_neg_sign", "torch", "d exp(-x)/dx written as +exp(-x)", "x")
def _torch_expneg(bug):
    torch = _torch()

    class ExpNeg(torch.autograd.Function):
        @staticmethod
        def forward(ctx, x):
            y = torch.exp(-x)
            ctx.save_for_backward(y)
            return y

        @staticmethod
        def backward(ctx, g):
            (y,) = ctx.saved_tensors
            return (y * g) if bug else (-y * g)

    return ExpNeg.apply, _tt(_normal(5, 4, 3, scale=0.5))


@_case("torch_sigmoid_ignores_grad_output", "torch", "backward returns s(1-s) without multiplying by grad_output", "x")
def _torch_sigmoid(bug):
    torch = _torch()

    class Sigmoid(torch.autograd.Function):
        @staticmethod
        def forward(ctx, x):
            s = torch.sigmoid(x)
            ctx.save_for_backward(s)
            return s

        @staticmethod
        def backward(ctx, g):
            (s,) = ctx.saved_tensors
            local = s * (1 - s)
            return local if bug else local * g

    return Sigmoid.apply, _tt(_normal(6, 4, 4))


@_case("torch_tanh_saves_input", "torch", "tanh saves x instead of y and computes 1 - x^2", "x")
def _torch_tanh(bug):
    torch = _torch()

    class Tanh(torch.autograd.Function):
        @staticmethod
        def forward(ctx, x):
            y = torch.tanh(x)
            ctx.save_for_backward(x if bug else y)
            return y

        @staticmethod
        def backward(ctx, g):
            (r,) = ctx.saved_tensors
            return g * (1 - r**2)

    return Tanh.apply, _tt(_normal(7, 3, 5, scale=0.7))


@_case("torch_scale_unbroadcast_wrong_axis", "torch", "y = x * b (b broadcast over rows): db summed over axis 1", "b")
def _torch_bcast(bug):
    torch = _torch()

    class RowScale(torch.autograd.Function):
        @staticmethod
        def forward(ctx, x, b):
            ctx.save_for_backward(x, b)
            return x * b

        @staticmethod
        def backward(ctx, g):
            x, b = ctx.saved_tensors
            db = (g * x).sum(dim=1 if bug else 0)
            return g * b, db

    return RowScale.apply, _tt(_normal(8, 4, 4), _normal(9, 4))


@_case("torch_softmax_one_element_off", "torch", "softmax backward correct except dx[1, 2], 0.1% off", "x", (1, 2))
def _torch_softmax(bug):
    torch = _torch()

    class Softmax(torch.autograd.Function):
        @staticmethod
        def forward(ctx, x):
            y = torch.softmax(x, dim=-1)
            ctx.save_for_backward(y)
            return y

        @staticmethod
        def backward(ctx, g):
            (y,) = ctx.saved_tensors
            dx = y * (g - (g * y).sum(dim=-1, keepdim=True))
            if bug:
                dx = dx.clone()
                dx[1, 2] *= 1.001
            return dx

    return Softmax.apply, _tt(_normal(10, 3, 5))


@_case("torch_gelu_approx_mismatch", "torch", "tanh-approximate GELU forward with the exact (erf) GELU derivative", "x")
def _torch_gelu(bug):
    torch = _torch()
    c = math.sqrt(2.0 / math.pi)

    class Gelu(torch.autograd.Function):
        @staticmethod
        def forward(ctx, x):
            ctx.save_for_backward(x)
            return 0.5 * x * (1 + torch.tanh(c * (x + 0.044715 * x**3)))

        @staticmethod
        def backward(ctx, g):
            (x,) = ctx.saved_tensors
            if bug:
                cdf = 0.5 * (1 + torch.erf(x / math.sqrt(2.0)))
                pdf = torch.exp(-0.5 * x**2) / math.sqrt(2 * math.pi)
                return g * (cdf + x * pdf)
            t = torch.tanh(c * (x + 0.044715 * x**3))
            return g * (0.5 * (1 + t) + 0.5 * x * (1 - t**2) * c * (1 + 3 * 0.044715 * x**2))

    return Gelu.apply, _tt(_normal(11, 4, 5, scale=1.5))


@_case("torch_layernorm_stats_constant", "torch", "layer-norm backward treats mean and variance as constants", "x")
def _torch_layernorm(bug):
    torch = _torch()

    class LayerNorm(torch.autograd.Function):
        @staticmethod
        def forward(ctx, x):
            mu = x.mean(-1, keepdim=True)
            sigma = torch.sqrt(((x - mu) ** 2).mean(-1, keepdim=True) + 1e-5)
            xhat = (x - mu) / sigma
            ctx.save_for_backward(xhat, sigma)
            return xhat

        @staticmethod
        def backward(ctx, g):
            xhat, sigma = ctx.saved_tensors
            if bug:
                return g / sigma
            return (g - g.mean(-1, keepdim=True) - xhat * (g * xhat).mean(-1, keepdim=True)) / sigma

    return LayerNorm.apply, _tt(_normal(12, 3, 6))


@_case("torch_layernorm_eps_mismatch", "torch",
       "layer-norm backward recomputes sigma with eps=1e-3 where forward used 1e-5 (~1e-3 relative)", "x")
def _torch_layernorm_eps(bug):
    torch = _torch()

    def stats(x, eps):
        mu = x.mean(-1, keepdim=True)
        return mu, torch.sqrt(((x - mu) ** 2).mean(-1, keepdim=True) + eps)

    class LayerNorm(torch.autograd.Function):
        @staticmethod
        def forward(ctx, x):
            ctx.save_for_backward(x)
            mu, sigma = stats(x, 1e-5)
            return (x - mu) / sigma

        @staticmethod
        def backward(ctx, g):
            (x,) = ctx.saved_tensors
            mu, sigma = stats(x, 1e-3 if bug else 1e-5)
            xhat = (x - mu) / sigma
            return (g - g.mean(-1, keepdim=True) - xhat * (g * xhat).mean(-1, keepdim=True)) / sigma

    return LayerNorm.apply, _tt(_normal(19, 3, 6))


@_case("torch_cumsum_not_reversed", "torch", "cumsum backward is a cumsum of g, not the reversed cumsum", "x")
def _torch_cumsum(bug):
    torch = _torch()

    class Cumsum(torch.autograd.Function):
        @staticmethod
        def forward(ctx, x):
            return torch.cumsum(x, dim=-1)

        @staticmethod
        def backward(ctx, g):
            if bug:
                return torch.cumsum(g, dim=-1)
            return torch.flip(torch.cumsum(torch.flip(g, [-1]), dim=-1), [-1])

    return Cumsum.apply, _tt(_normal(13, 3, 5))


@_case("torch_two_outputs_swapped", "torch", "(x*y, x+y): backward swaps the two incoming gradients for dx", "x")
def _torch_two_outputs(bug):
    torch = _torch()

    class ProdSum(torch.autograd.Function):
        @staticmethod
        def forward(ctx, x, y):
            ctx.save_for_backward(x, y)
            return x * y, x + y

        @staticmethod
        def backward(ctx, g_prod, g_sum):
            x, y = ctx.saved_tensors
            dx = (g_sum * y + g_prod) if bug else (g_prod * y + g_sum)
            return dx, g_prod * x + g_sum

    return ProdSum.apply, _tt(_normal(14, 3, 4), _normal(15, 3, 4))


@_case("torch_batched_matmul_first_batch_only", "torch", "shared W in a batched matmul: dW from batch 0 only", "W")
def _torch_bmm(bug):
    torch = _torch()

    class BatchedLinear(torch.autograd.Function):
        @staticmethod
        def forward(ctx, x, W):
            ctx.save_for_backward(x, W)
            return x @ W

        @staticmethod
        def backward(ctx, g):
            x, W = ctx.saved_tensors
            dW = x[0].T @ g[0] if bug else torch.einsum("bij,bik->jk", x, g)
            return g @ W.T, dW

    return BatchedLinear.apply, _tt(_normal(16, 3, 2, 4), _normal(17, 4, 3))


@_case("torch_scaled_cube_ignores_scale", "torch", "y = s * x^3 with a Python-float s: backward drops s", "x")
def _torch_scaled(bug):
    torch = _torch()

    class ScaledCube(torch.autograd.Function):
        @staticmethod
        def forward(ctx, x, s):
            ctx.save_for_backward(x)
            ctx.s = s
            return s * x**3

        @staticmethod
        def backward(ctx, g):
            (x,) = ctx.saved_tensors
            k = 1.0 if bug else ctx.s
            return 3 * k * x**2 * g, None

    (x,) = _tt(_normal(18, 4, 3))
    return ScaledCube.apply, (x, 2.5)


# ---------------------------------------------------------------------------
# jax.custom_vjp
# ---------------------------------------------------------------------------

def _jax():
    import jax
    import jax.numpy as jnp

    return jax, jnp


@_case("jax_linear_transposed_dW", "jax", "dW = g.T @ x instead of x.T @ g (square W)", "W")
def _jax_linear(bug):
    jax, jnp = _jax()

    @jax.custom_vjp
    def linear(x, W):
        return x @ W

    def fwd(x, W):
        return x @ W, (x, W)

    def bwd(res, g):
        x, W = res
        return g @ W.T, (g.T @ x if bug else x.T @ g)

    linear.defvjp(fwd, bwd)
    return linear, (_normal(21, 5, 4), _normal(22, 4, 4))


@_case("jax_square_missing_factor", "jax", "d(x^2 w)/dx = x w g: the factor 2 is missing", "x")
def _jax_square(bug):
    jax, jnp = _jax()

    @jax.custom_vjp
    def f(x, w):
        return x**2 * w

    def fwd(x, w):
        return x**2 * w, (x, w)

    def bwd(res, g):
        x, w = res
        return (1.0 if bug else 2.0) * x * w * g, x**2 * g

    f.defvjp(fwd, bwd)
    return f, (_normal(23, 3, 4), _normal(24, 3, 4))


@_case("jax_exp_neg_sign", "jax", "d exp(-x)/dx written as +exp(-x)", "x")
def _jax_expneg(bug):
    jax, jnp = _jax()

    @jax.custom_vjp
    def f(x):
        return jnp.exp(-x)

    def fwd(x):
        y = jnp.exp(-x)
        return y, y

    def bwd(y, g):
        return ((y * g) if bug else (-y * g),)

    f.defvjp(fwd, bwd)
    return f, (_normal(25, 4, 3, scale=0.5),)


@_case("jax_sigmoid_ignores_g", "jax", "bwd returns s(1-s) without multiplying by g", "x")
def _jax_sigmoid(bug):
    jax, jnp = _jax()

    @jax.custom_vjp
    def f(x):
        return jax.nn.sigmoid(x)

    def fwd(x):
        s = jax.nn.sigmoid(x)
        return s, s

    def bwd(s, g):
        local = s * (1 - s)
        return (local if bug else local * g,)

    f.defvjp(fwd, bwd)
    return f, (_normal(26, 4, 4),)


@_case("jax_tanh_wrong_residual", "jax", "tanh keeps x as residual instead of y and computes 1 - x^2", "x")
def _jax_tanh(bug):
    jax, jnp = _jax()

    @jax.custom_vjp
    def f(x):
        return jnp.tanh(x)

    def fwd(x):
        y = jnp.tanh(x)
        return y, (x if bug else y)

    def bwd(r, g):
        return (g * (1 - r**2),)

    f.defvjp(fwd, bwd)
    return f, (_normal(27, 3, 5, scale=0.7),)


@_case("jax_scale_unbroadcast_wrong_axis", "jax", "y = x * b (b broadcast over rows): db summed over axis 1", "b")
def _jax_bcast(bug):
    jax, jnp = _jax()

    @jax.custom_vjp
    def f(x, b):
        return x * b

    def fwd(x, b):
        return x * b, (x, b)

    def bwd(res, g):
        x, b = res
        return g * b, (g * x).sum(axis=1 if bug else 0)

    f.defvjp(fwd, bwd)
    return f, (_normal(28, 4, 4), _normal(29, 4))


@_case("jax_softmax_one_element_off", "jax", "softmax bwd correct except dx[1, 2], 0.1% off", "x", (1, 2))
def _jax_softmax(bug):
    jax, jnp = _jax()

    @jax.custom_vjp
    def f(x):
        return jax.nn.softmax(x, axis=-1)

    def fwd(x):
        y = jax.nn.softmax(x, axis=-1)
        return y, y

    def bwd(y, g):
        dx = y * (g - (g * y).sum(axis=-1, keepdims=True))
        return (dx.at[1, 2].multiply(1.001) if bug else dx,)

    f.defvjp(fwd, bwd)
    return f, (_normal(30, 3, 5),)


@_case("jax_gelu_approx_mismatch", "jax", "tanh-approximate GELU with the exact (erf) GELU derivative", "x")
def _jax_gelu(bug):
    jax, jnp = _jax()
    c = math.sqrt(2.0 / math.pi)

    def gelu(x):
        return 0.5 * x * (1 + jnp.tanh(c * (x + 0.044715 * x**3)))

    f = jax.custom_vjp(gelu)

    def fwd(x):
        return gelu(x), x

    def bwd(x, g):
        if bug:
            cdf = 0.5 * (1 + jax.scipy.special.erf(x / math.sqrt(2.0)))
            pdf = jnp.exp(-0.5 * x**2) / math.sqrt(2 * math.pi)
            return (g * (cdf + x * pdf),)
        t = jnp.tanh(c * (x + 0.044715 * x**3))
        return (g * (0.5 * (1 + t) + 0.5 * x * (1 - t**2) * c * (1 + 3 * 0.044715 * x**2)),)

    f.defvjp(fwd, bwd)
    return f, (_normal(31, 4, 5, scale=1.5),)


@_case("jax_softmax_axis_nondiff_wrong_axis", "jax",
       "softmax with nondiff_argnums axis: bwd reduces over the other axis", "x")
def _jax_softmax_axis(bug):
    jax, jnp = _jax()
    import functools

    @functools.partial(jax.custom_vjp, nondiff_argnums=(1,))
    def f(x, axis):
        return jax.nn.softmax(x, axis=axis)

    def fwd(x, axis):
        y = jax.nn.softmax(x, axis=axis)
        return y, y

    def bwd(axis, y, g):
        red = (1 - axis) if bug else axis
        return (y * (g - (g * y).sum(axis=red, keepdims=True)),)

    f.defvjp(fwd, bwd)
    return f, (_normal(32, 4, 4), 0)


@_case("jax_cumsum_not_reversed", "jax", "cumsum bwd is a cumsum of g, not the reversed cumsum", "x")
def _jax_cumsum(bug):
    jax, jnp = _jax()

    @jax.custom_vjp
    def f(x):
        return jnp.cumsum(x, axis=-1)

    def fwd(x):
        return jnp.cumsum(x, axis=-1), None

    def bwd(_, g):
        if bug:
            return (jnp.cumsum(g, axis=-1),)
        return (jnp.flip(jnp.cumsum(jnp.flip(g, -1), axis=-1), -1),)

    f.defvjp(fwd, bwd)
    return f, (_normal(33, 3, 5),)


@_case("jax_two_outputs_swapped", "jax", "(x*y, x+y): bwd swaps the two incoming cotangents for dx", "x")
def _jax_two_outputs(bug):
    jax, jnp = _jax()

    @jax.custom_vjp
    def f(x, y):
        return x * y, x + y

    def fwd(x, y):
        return (x * y, x + y), (x, y)

    def bwd(res, gs):
        x, y = res
        g_prod, g_sum = gs
        dx = (g_sum * y + g_prod) if bug else (g_prod * y + g_sum)
        return dx, g_prod * x + g_sum

    f.defvjp(fwd, bwd)
    return f, (_normal(34, 3, 4), _normal(35, 3, 4))


@_case("jax_layernorm_stats_constant", "jax", "layer-norm bwd treats mean and variance as constants", "x")
def _jax_layernorm(bug):
    jax, jnp = _jax()

    def norm(x):
        mu = x.mean(-1, keepdims=True)
        sigma = jnp.sqrt(((x - mu) ** 2).mean(-1, keepdims=True) + 1e-5)
        return (x - mu) / sigma, sigma

    @jax.custom_vjp
    def f(x):
        return norm(x)[0]

    def fwd(x):
        xhat, sigma = norm(x)
        return xhat, (xhat, sigma)

    def bwd(res, g):
        xhat, sigma = res
        if bug:
            return (g / sigma,)
        return ((g - g.mean(-1, keepdims=True) - xhat * (g * xhat).mean(-1, keepdims=True)) / sigma,)

    f.defvjp(fwd, bwd)
    return f, (_normal(36, 3, 6),)


@_case("jax_layernorm_eps_mismatch", "jax",
       "layer-norm bwd recomputes sigma with eps=1e-3 where fwd used 1e-5 (~1e-3 relative)", "x")
def _jax_layernorm_eps(bug):
    jax, jnp = _jax()

    def stats(x, eps):
        mu = x.mean(-1, keepdims=True)
        return mu, jnp.sqrt(((x - mu) ** 2).mean(-1, keepdims=True) + eps)

    def ln(x):
        mu, sigma = stats(x, 1e-5)
        return (x - mu) / sigma

    f = jax.custom_vjp(ln)

    def fwd(x):
        return ln(x), x

    def bwd(x, g):
        mu, sigma = stats(x, 1e-3 if bug else 1e-5)
        xhat = (x - mu) / sigma
        return ((g - g.mean(-1, keepdims=True) - xhat * (g * xhat).mean(-1, keepdims=True)) / sigma,)

    f.defvjp(fwd, bwd)
    return f, (_normal(39, 3, 6),)


@_case("jax_dict_output_reuses_cotangent", "jax", "dict output {'a': x*w, 'b': sin x}: bwd uses g['a'] for both", "x")
def _jax_dict_output(bug):
    jax, jnp = _jax()

    def both(x, w):
        return {"a": x * w, "b": jnp.sin(x)}

    f = jax.custom_vjp(both)

    def fwd(x, w):
        return both(x, w), (x, w)

    def bwd(res, g):
        x, w = res
        gb = g["a"] if bug else g["b"]
        return g["a"] * w + gb * jnp.cos(x), g["a"] * x

    f.defvjp(fwd, bwd)
    return f, (_normal(37, 3, 4), _normal(38, 3, 4))


BUGS = [e for e in ENTRIES if e.is_bug]
TWINS = [e for e in ENTRIES if not e.is_bug]
TORCH = [e for e in ENTRIES if e.framework == "torch"]
JAX = [e for e in ENTRIES if e.framework == "jax"]
_BY_NAME = {e.name: e for e in ENTRIES}


def by_name(name: str) -> Entry:
    """The entry called ``name``."""
    return _BY_NAME[name]
