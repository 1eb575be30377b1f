"""Correct but numerically awkward layers and function pairs.

Every case here has an exact, hand-written backward pass; the only thing that
makes it hard is numerics: saturation, extreme magnitudes, exact zeros,
float32 arithmetic, catastrophic cancellation, many parameters, gradients of
wildly different scales in one tensor.  These are the cases on which gradient
checkers raise false alarms (see section 2 of
``shared/research/gradient-checkers-landscape.md``: float32 false failures,
steps wrong for the magnitude, one leaf swamping a projection).  gradverify
must pass every one of them with its default settings.

Building a case costs one small allocation; nothing here imports gradverify.

Two protocols are covered:

* ``kind == "layer"``: the numpy object protocol.  ``layer.params`` is a dict
  of arrays, ``layer.forward(x)`` caches what it needs on ``self``,
  ``layer.backward(dy)`` returns ``dx`` and sets ``layer.grads`` (one entry
  per params key).  Layers always read their parameters through
  ``self.params[...]`` at call time, so a checker may replace or perturb them,
  and they compute in whatever dtype they are given (so a float32 layer can be
  re-run in float64 as an oracle) -- except ``f32_internal_cast``, which casts
  to float32 internally on purpose.
* ``kind == "pair"``: ``forward(*inputs) -> (out, cache)`` and
  ``backward(dout, cache) -> tuple`` with one gradient per input.

Use :func:`build` to instantiate a case for a seed.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import numpy as np

__all__ = ["Case", "CASES", "LAYER_CASES", "PAIR_CASES", "build", "by_name"]


@dataclass(frozen=True)
class Case:
    """One corpus entry (metadata only; :func:`build` instantiates it).

    Attributes:
        name: unique identifier, used as the pytest id.
        kind: ``"layer"`` (object protocol) or ``"pair"`` (function pair).
        factory: ``factory(rng)`` returns the layer object (layer) or the
            ``(forward, backward)`` tuple (pair).
        dtype: the floating dtype of the parameters and inputs.
        input_shape: for layers only: the input shape when the checker should
            draw ``x`` itself (standard normal in the params' dtype).
        inputs: ``inputs(rng)`` returns ``x`` (layer) or a tuple of inputs
            (pair) when the case needs specific input values.
        note: why this case is awkward.
    """

    name: str
    kind: str
    factory: Callable[[np.random.Generator], Any]
    dtype: Any = np.float64
    input_shape: tuple | None = None
    inputs: Callable[[np.random.Generator], Any] | None = None
    note: str = ""


@dataclass
class Built:
    """A case instantiated for one seed."""

    case: Case
    obj: Any  # the layer, or the (forward, backward) tuple
    input_shape: tuple | None
    inputs: Any  # ndarray (layer), tuple of ndarrays (pair), or None


def build(case: Case, seed: int) -> Built:
    """Instantiate ``case`` with ``np.random.default_rng(seed)``; cost: O(size)."""
    rng = np.random.default_rng(seed)
    obj = case.factory(rng)
    inputs = case.inputs(rng) if case.inputs is not None else None
    return Built(case, obj, case.input_shape, inputs)


# --------------------------------------------------------------------------
# helpers: forward formula and local derivative side by side
# --------------------------------------------------------------------------


def _sigmoid(z):
    """Overflow-free logistic function, in z's dtype."""
    ez = np.exp(-np.abs(z))
    return np.where(z >= 0, 1 / (1 + ez), ez / (1 + ez))


def _softmax(z, axis=-1):
    e = np.exp(z - z.max(axis=axis, keepdims=True))
    return e / e.sum(axis=axis, keepdims=True)


def _log_softmax(z, axis=-1):
    m = z.max(axis=axis, keepdims=True)
    return z - m - np.log(np.exp(z - m).sum(axis=axis, keepdims=True))


def _softmax_vjp(s, ds, axis=-1):
    # d/dz of s = softmax(z): ds -> s * (ds - <ds, s>)
    return s * (ds - (ds * s).sum(axis=axis, keepdims=True))


def _norm_fwd(x, axis, eps):
    mu = x.mean(axis=axis, keepdims=True)
    xc = x - mu
    var = (xc * xc).mean(axis=axis, keepdims=True)
    rstd = 1 / np.sqrt(var + eps)
    return xc * rstd, rstd


def _norm_vjp(dxhat, xhat, rstd, axis):
    # exact vjp of xhat = (x - mean) / sqrt(var + eps) along `axis`
    m1 = dxhat.mean(axis=axis, keepdims=True)
    m2 = (dxhat * xhat).mean(axis=axis, keepdims=True)
    return rstd * (dxhat - m1 - xhat * m2)


def _conv2d_fwd(x, w, b):
    """Valid, stride-1 cross-correlation: x (N,C,H,W), w (F,C,kh,kw), b (F,)."""
    n, c, h, wd = x.shape
    f, _, kh, kw = w.shape
    ho, wo = h - kh + 1, wd - kw + 1
    y = np.zeros((n, f, ho, wo), dtype=np.result_type(x, w))
    for p in range(kh):
        for q in range(kw):
            y += np.einsum("nchw,fc->nfhw", x[:, :, p:p + ho, q:q + wo], w[:, :, p, q])
    return y + b[None, :, None, None]


def _conv2d_bwd(dy, x, w):
    f, _, kh, kw = w.shape
    ho, wo = dy.shape[2], dy.shape[3]
    dx = np.zeros_like(x, dtype=np.result_type(dy, w))
    dw = np.zeros_like(w, dtype=np.result_type(dy, x))
    for p in range(kh):
        for q in range(kw):
            xs = x[:, :, p:p + ho, q:q + wo]
            dw[:, :, p, q] = np.einsum("nfhw,nchw->fc", dy, xs)
            dx[:, :, p:p + ho, q:q + wo] += np.einsum("nfhw,fc->nchw", dy, w[:, :, p, q])
    db = dy.sum(axis=(0, 2, 3))
    return dx, dw, db


class _Layer:
    """Base for corpus layers: a params dict and a grads dict."""

    def __init__(self, **params):
        self.params: dict[str, np.ndarray] = dict(params)
        self.grads: dict[str, np.ndarray] = {}


# --------------------------------------------------------------------------
# layers (object protocol)
# --------------------------------------------------------------------------


class DenseAct(_Layer):
    """y = act(x @ W + b) for act in {identity, tanh, sigmoid, relu, cube}.

    Optionally the output columns are multiplied by constant ``col_scale``.
    """

    def __init__(self, W, b, act="tanh", col_scale=None):
        super().__init__(W=W, b=b)
        self.act = act
        self.col_scale = col_scale

    def forward(self, x):
        z = x @ self.params["W"] + self.params["b"]
        if self.act == "identity":
            a = z
        elif self.act == "tanh":
            a = np.tanh(z)
        elif self.act == "sigmoid":
            a = _sigmoid(z)
        elif self.act == "relu":
            a = np.maximum(z, 0)
        elif self.act == "cube":
            a = z ** 3
        else:  # pragma: no cover
            raise ValueError(self.act)
        self._cache = (x, z, a)
        return a if self.col_scale is None else a * self.col_scale

    def backward(self, dy):
        x, z, a = self._cache
        if self.col_scale is not None:
            dy = dy * self.col_scale
        if self.act == "identity":
            dz = dy
        elif self.act == "tanh":
            dz = dy * (1 - a * a)
        elif self.act == "sigmoid":
            dz = dy * a * (1 - a)
        elif self.act == "relu":
            dz = dy * (z > 0)
        elif self.act == "cube":
            dz = dy * 3 * z * z
        self.grads = {"W": x.T @ dz, "b": dz.sum(axis=0)}
        return dz @ self.params["W"].T


class IgnoredParam(_Layer):
    """y = tanh(x @ W); parameter ``unused`` never touches the output."""

    def __init__(self, W, unused):
        super().__init__(W=W, unused=unused)

    def forward(self, x):
        self._x = x
        self._y = np.tanh(x @ self.params["W"])
        return self._y

    def backward(self, dy):
        dz = dy * (1 - self._y ** 2)
        self.grads = {"W": self._x.T @ dz, "unused": np.zeros_like(self.params["unused"])}
        return dz @ self.params["W"].T


class F32InternalCast(_Layer):
    """y = tanh(x @ W + b) computed in float32 whatever the input dtype.

    Parameters and inputs are float64; output is float32; gradients are
    float32-accurate values returned in the float64 dtypes of x and params
    (like a CUDA kernel that only has a float32 path).
    """

    def __init__(self, W, b):
        super().__init__(W=W, b=b)

    def forward(self, x):
        x32 = np.asarray(x, dtype=np.float32)
        W32 = self.params["W"].astype(np.float32)
        b32 = self.params["b"].astype(np.float32)
        y = np.tanh(x32 @ W32 + b32)
        self._cache = (x, x32, W32, y)
        return y

    def backward(self, dy):
        x, x32, W32, y = self._cache
        dz = np.asarray(dy, dtype=np.float32) * (np.float32(1) - y * y)
        self.grads = {
            "W": (x32.T @ dz).astype(self.params["W"].dtype),
            "b": dz.sum(axis=0).astype(self.params["b"].dtype),
        }
        return (dz @ W32.T).astype(x.dtype)


class LayerNorm(_Layer):
    """Layer normalisation over the last axis, affine gamma/beta."""

    def __init__(self, gamma, beta, eps=1e-5):
        super().__init__(gamma=gamma, beta=beta)
        self.eps = eps

    def forward(self, x):
        xhat, rstd = _norm_fwd(x, -1, self.eps)
        self._cache = (xhat, rstd)
        return xhat * self.params["gamma"] + self.params["beta"]

    def backward(self, dy):
        xhat, rstd = self._cache
        self.grads = {
            "gamma": (dy * xhat).reshape(-1, xhat.shape[-1]).sum(axis=0),
            "beta": dy.reshape(-1, xhat.shape[-1]).sum(axis=0),
        }
        return _norm_vjp(dy * self.params["gamma"], xhat, rstd, -1)


class BatchNormTrain(_Layer):
    """Batch normalisation, training mode (batch statistics over axis 0)."""

    def __init__(self, gamma, beta, eps=1e-5):
        super().__init__(gamma=gamma, beta=beta)
        self.eps = eps

    def forward(self, x):
        xhat, rstd = _norm_fwd(x, 0, self.eps)
        self._cache = (xhat, rstd)
        return xhat * self.params["gamma"] + self.params["beta"]

    def backward(self, dy):
        xhat, rstd = self._cache
        self.grads = {"gamma": (dy * xhat).sum(axis=0), "beta": dy.sum(axis=0)}
        return _norm_vjp(dy * self.params["gamma"], xhat, rstd, 0)


class Conv2D(_Layer):
    """Valid stride-1 2-D convolution (cross-correlation) with bias."""

    def __init__(self, W, b):
        super().__init__(W=W, b=b)

    def forward(self, x):
        self._x = x
        return _conv2d_fwd(x, self.params["W"], self.params["b"])

    def backward(self, dy):
        dx, dw, db = _conv2d_bwd(dy, self._x, self.params["W"])
        self.grads = {"W": dw, "b": db}
        return dx


class Softmax(_Layer):
    """Parameter-free softmax over the last axis."""

    def __init__(self):
        super().__init__()

    def forward(self, x):
        self._s = _softmax(x)
        return self._s

    def backward(self, dy):
        self.grads = {}
        return _softmax_vjp(self._s, dy)


class DeepTanh(_Layer):
    """A composition of ``depth`` dense-tanh layers (params W0..., b0...)."""

    def __init__(self, Ws, bs):
        super().__init__()
        self.depth = len(Ws)
        for i, (W, b) in enumerate(zip(Ws, bs)):
            self.params[f"W{i}"] = W
            self.params[f"b{i}"] = b

    def forward(self, x):
        self._acts = [x]
        h = x
        for i in range(self.depth):
            h = np.tanh(h @ self.params[f"W{i}"] + self.params[f"b{i}"])
            self._acts.append(h)
        return h

    def backward(self, dy):
        grads = {}
        dh = dy
        for i in reversed(range(self.depth)):
            dz = dh * (1 - self._acts[i + 1] ** 2)
            grads[f"W{i}"] = self._acts[i].T @ dz
            grads[f"b{i}"] = dz.sum(axis=0)
            dh = dz @ self.params[f"W{i}"].T
        self.grads = grads
        return dh


class Attention(_Layer):
    """Single-head self-attention: softmax(x Wq (x Wk)^T / sqrt(d)) x Wv Wo."""

    def __init__(self, Wq, Wk, Wv, Wo):
        super().__init__(Wq=Wq, Wk=Wk, Wv=Wv, Wo=Wo)

    def forward(self, x):
        p = self.params
        d = p["Wq"].shape[1]
        q, k, v = x @ p["Wq"], x @ p["Wk"], x @ p["Wv"]
        scale = 1 / np.sqrt(d)
        a = _softmax(q @ k.T * scale)
        o = a @ v
        self._cache = (x, q, k, v, a, o, scale)
        return o @ p["Wo"]

    def backward(self, dy):
        p = self.params
        x, q, k, v, a, o, scale = self._cache
        do = dy @ p["Wo"].T
        dv = a.T @ do
        ds = _softmax_vjp(a, do @ v.T) * scale
        dq = ds @ k
        dk = ds.T @ q
        self.grads = {"Wq": x.T @ dq, "Wk": x.T @ dk, "Wv": x.T @ dv, "Wo": o.T @ dy}
        return dq @ p["Wq"].T + dk @ p["Wk"].T + dv @ p["Wv"].T


class LSTMCell(_Layer):
    """One LSTM step from a constant state (h0, c0); the output is h."""

    def __init__(self, Wx, Wh, b, h0, c0):
        super().__init__(Wx=Wx, Wh=Wh, b=b)
        self.h0, self.c0 = h0, c0

    def forward(self, x):
        p = self.params
        H = p["Wh"].shape[0]
        z = x @ p["Wx"] + self.h0 @ p["Wh"] + p["b"]
        i = _sigmoid(z[:, :H])
        f = _sigmoid(z[:, H:2 * H])
        o = _sigmoid(z[:, 2 * H:3 * H])
        g = np.tanh(z[:, 3 * H:])
        c = f * self.c0 + i * g
        tc = np.tanh(c)
        self._cache = (x, i, f, o, g, tc)
        return o * tc

    def backward(self, dh):
        x, i, f, o, g, tc = self._cache
        do = dh * tc
        dc = dh * o * (1 - tc * tc)
        di, df, dg = dc * g, dc * self.c0, dc * i
        dz = np.concatenate(
            [di * i * (1 - i), df * f * (1 - f), do * o * (1 - o), dg * (1 - g * g)], axis=1
        )
        p = self.params
        self.grads = {"Wx": x.T @ dz, "Wh": self.h0.T @ dz, "b": dz.sum(axis=0)}
        return dz @ p["Wx"].T


class GRUCell(_Layer):
    """One GRU step (PyTorch gate convention) from a constant state h0."""

    def __init__(self, Wx, Wh, bx, bh, h0):
        super().__init__(Wx=Wx, Wh=Wh, bx=bx, bh=bh)
        self.h0 = h0

    def forward(self, x):
        p = self.params
        H = p["Wh"].shape[0]
        gx = x @ p["Wx"] + p["bx"]  # (B, 3H): r, z, n parts
        gh = self.h0 @ p["Wh"] + p["bh"]
        r = _sigmoid(gx[:, :H] + gh[:, :H])
        z = _sigmoid(gx[:, H:2 * H] + gh[:, H:2 * H])
        n = np.tanh(gx[:, 2 * H:] + r * gh[:, 2 * H:])
        self._cache = (x, gh, r, z, n)
        return (1 - z) * n + z * self.h0

    def backward(self, dy):
        x, gh, r, z, n = self._cache
        H = n.shape[1]
        dn = dy * (1 - z)
        dz = dy * (self.h0 - n)
        dan = dn * (1 - n * n)  # pre-activation of n
        dr = dan * gh[:, 2 * H:]
        dar = dr * r * (1 - r)
        daz = dz * z * (1 - z)
        dgx = np.concatenate([dar, daz, dan], axis=1)
        dgh = np.concatenate([dar, daz, dan * r], axis=1)
        self.grads = {
            "Wx": x.T @ dgx,
            "Wh": self.h0.T @ dgh,
            "bx": dgx.sum(axis=0),
            "bh": dgh.sum(axis=0),
        }
        return dgx @ self.params["Wx"].T


class EmbeddingScale(_Layer):
    """y = E[idx] * x with constant integer indices ``idx`` (repeats allowed)."""

    def __init__(self, E, idx):
        super().__init__(E=E)
        self.idx = np.asarray(idx)

    def forward(self, x):
        self._x = x
        self._e = self.params["E"][self.idx]
        return self._e * x

    def backward(self, dy):
        dE = np.zeros_like(self.params["E"])
        np.add.at(dE, self.idx, dy * self._x)  # repeated rows accumulate
        self.grads = {"E": dE}
        return dy * self._e


class Polynomial(_Layer):
    """Elementwise y = sum_k c[k] x**k (Horner), coefficients are params."""

    def __init__(self, c):
        super().__init__(c=c)

    def forward(self, x):
        c = self.params["c"]
        y = np.zeros_like(x) + c[-1]
        for ck in c[-2::-1]:
            y = y * x + ck
        self._x = x
        return y

    def backward(self, dy):
        c = self.params["c"]
        x = self._x
        deg = len(c) - 1
        dpdx = np.zeros_like(x) + deg * c[-1]
        for k in range(deg - 1, 0, -1):
            dpdx = dpdx * x + k * c[k]
        powers = np.stack([x ** k for k in range(deg + 1)])  # (deg+1, *x.shape)
        self.grads = {"c": (powers * dy).reshape(deg + 1, -1).sum(axis=1)}
        return dy * dpdx


class ScalarSinLayer(_Layer):
    """0-d input and 0-d parameter: y = sin(w x) * x (returns numpy scalars)."""

    def __init__(self, w):
        super().__init__(w=w)

    def forward(self, x):
        self._x = x
        return np.sin(self.params["w"] * x) * x

    def backward(self, dy):
        w, x = self.params["w"], self._x
        c, s = np.cos(w * x), np.sin(w * x)
        self.grads = {"w": dy * c * x * x}
        return dy * (c * w * x + s)


class SoftmaxXentLoss(_Layer):
    """Scalar loss: mean cross-entropy of softmax(x @ W + b) at fixed labels."""

    def __init__(self, W, b, labels):
        super().__init__(W=W, b=b)
        self.labels = np.asarray(labels)

    def forward(self, x):
        z = x @ self.params["W"] + self.params["b"]
        ls = _log_softmax(z)
        n = x.shape[0]
        self._cache = (x, ls)
        return -ls[np.arange(n), self.labels].mean()

    def backward(self, dy):
        x, ls = self._cache
        n = x.shape[0]
        dz = np.exp(ls)
        dz[np.arange(n), self.labels] -= 1
        dz = dz * (dy / n)
        self.grads = {"W": x.T @ dz, "b": dz.sum(axis=0)}
        return dz @ self.params["W"].T


# --------------------------------------------------------------------------
# function pairs
# --------------------------------------------------------------------------


def _relu_pair():
    def forward(x):
        return np.maximum(x, 0), x

    def backward(dout, x):
        return (dout * (x > 0),)

    return forward, backward


def _tanh_pair():
    def forward(x):
        y = np.tanh(x)
        return y, y

    def backward(dout, y):
        return (dout * (1 - y * y),)

    return forward, backward


def _sigmoid_pair():
    def forward(x):
        s = _sigmoid(x)
        return s, s

    def backward(dout, s):
        return (dout * s * (1 - s),)

    return forward, backward


def _softmax_pair():
    def forward(x):
        s = _softmax(x)
        return s, s

    def backward(dout, s):
        return (_softmax_vjp(s, dout),)

    return forward, backward


def _log_softmax_pair():
    def forward(x):
        ls = _log_softmax(x)
        return ls, ls

    def backward(dout, ls):
        return (dout - np.exp(ls) * dout.sum(axis=-1, keepdims=True),)

    return forward, backward


def _logsumexp_pair():
    def forward(x):
        m = x.max(axis=-1, keepdims=True)
        out = (m + np.log(np.exp(x - m).sum(axis=-1, keepdims=True)))[..., 0]
        return out, (x, out)

    def backward(dout, cache):
        x, out = cache
        return (dout[..., None] * np.exp(x - out[..., None]),)

    return forward, backward


def _exp_pair():
    def forward(x):
        y = np.exp(x)
        return y, y

    def backward(dout, y):
        return (dout * y,)

    return forward, backward


def _log_pair():
    def forward(x):
        return np.log(x), x

    def backward(dout, x):
        return (dout / x,)

    return forward, backward


def _reciprocal_pair():
    def forward(x):
        return 1 / x, x

    def backward(dout, x):
        return (-dout / (x * x),)

    return forward, backward


def _cumsum_pair():
    def forward(x):
        return np.cumsum(x, axis=1), None

    def backward(dout, _):
        return (np.flip(np.cumsum(np.flip(dout, 1), axis=1), 1),)

    return forward, backward


def _cumprod_pair():
    def forward(x):
        return np.cumprod(x, axis=1), x

    def backward(dout, x):
        # d out[j] / d x[i] = prod_{k <= j, k != i} x[k] for j >= i; no
        # division, so exact even when an entry is small.
        n = x.shape[1]
        dx = np.zeros_like(x, dtype=np.result_type(x, dout))
        for i in range(n):
            others = x.copy()
            others[:, i] = 1
            partial = np.cumprod(others, axis=1)  # prod_{k<=j, k!=i}
            dx[:, i] = (dout[:, i:] * partial[:, i:]).sum(axis=1)
        return (dx,)

    return forward, backward


def _max_pair():
    def forward(x):
        j = x.argmax(axis=1)
        return x[np.arange(x.shape[0]), j], (x.shape, j)

    def backward(dout, cache):
        shape, j = cache
        dx = np.zeros(shape, dtype=dout.dtype)
        dx[np.arange(shape[0]), j] = dout
        return (dx,)

    return forward, backward


def _scalar_pair():
    def forward(x):
        return np.asarray(np.sin(x) * x * x), x

    def backward(dout, x):
        return (np.asarray(dout * (np.cos(x) * x * x + 2 * x * np.sin(x))),)

    return forward, backward


def _mse_pair():
    def forward(pred, target):
        d = pred - target
        return np.asarray((d * d).mean()), d

    def backward(dout, d):
        g = dout * 2 * d / d.size
        return g, -g

    return forward, backward


def _broadcast_affine_pair():
    def forward(x, w, b):
        return x * w + b, (x, w)

    def backward(dout, cache):
        x, w = cache
        return dout * w, (dout * x).sum(axis=0), dout.sum(axis=0, keepdims=True)

    return forward, backward


# --------------------------------------------------------------------------
# the corpus
# --------------------------------------------------------------------------

F64, F32 = np.float64, np.float32


def _n(rng, *shape, scale=1.0, dtype=F64):
    return (scale * rng.standard_normal(shape)).astype(dtype)


def _signs(rng, shape):
    return np.where(rng.random(shape) < 0.5, -1.0, 1.0)


def _distinct_gaps(rng):
    # rows are permutations of 0, 10, ..., 50 plus jitter < 1: the max leads
    # the runner-up by at least 9, so no step can change the argmax.
    rows = [rng.permutation(6) * 10.0 + rng.random(6) for _ in range(3)]
    return np.stack(rows)


def _lstm(rng):
    B, D, H = 2, 3, 4
    return LSTMCell(
        _n(rng, D, 4 * H, scale=0.5), _n(rng, H, 4 * H, scale=0.5), _n(rng, 4 * H, scale=0.1),
        h0=_n(rng, B, H, scale=0.5), c0=_n(rng, B, H),
    )


def _gru(rng):
    B, D, H = 2, 3, 4
    return GRUCell(
        _n(rng, D, 3 * H, scale=0.5), _n(rng, H, 3 * H, scale=0.5),
        _n(rng, 3 * H, scale=0.1), _n(rng, 3 * H, scale=0.1), h0=_n(rng, B, H, scale=0.5),
    )


LAYER_CASES: tuple[Case, ...] = (
    Case("dense_tanh_saturated", "layer",
         lambda r: DenseAct(_n(r, 4, 3, scale=10.0), _n(r, 3), "tanh"),
         input_shape=(5, 4),
         note="pre-activations ~N(0, 20^2): tanh' from ~1 down to exactly 0"),
    Case("dense_sigmoid_saturated", "layer",
         lambda r: DenseAct(_n(r, 4, 3, scale=10.0), _n(r, 3), "sigmoid"),
         input_shape=(5, 4),
         note="sigmoid' from 0.25 down to ~1e-18 / exactly 0"),
    Case("tanh_weights_1e4_inputs_1e-4", "layer",
         lambda r: DenseAct(_n(r, 4, 3, scale=0.5e4), _n(r, 3, scale=0.1), "tanh"),
         inputs=lambda r: _n(r, 5, 4, scale=1e-4),
         note="a step scaled to |x| ~1e-4 moves z by ~1; dW ~1e-4, dx ~1e4"),
    Case("dense_tanh_weights_1e-6", "layer",
         lambda r: DenseAct(_n(r, 4, 3, scale=1e-6), _n(r, 3), "tanh"),
         input_shape=(5, 4),
         note="dx ~1e-6 while dW ~1"),
    Case("dense_cube_huge_outputs", "layer",
         lambda r: DenseAct(_n(r, 4, 3, scale=200.0), _n(r, 3), "cube"),
         input_shape=(5, 4),
         note="z ~ 400 so y = z**3 ~ 1e8; rounding noise of y ~1e-8"),
    Case("relu_dense_all_dead", "layer",
         lambda r: DenseAct(_n(r, 4, 3, scale=0.5), np.full(3, -100.0), "relu"),
         input_shape=(5, 4),
         note="b = -100: every unit dead, every gradient exactly 0 (no kink near)"),
    Case("ignored_parameter", "layer",
         lambda r: IgnoredParam(_n(r, 4, 3), _n(r, 3)),
         input_shape=(5, 4),
         note="grads['unused'] is exactly zero"),
    Case("dense_f32", "layer",
         lambda r: DenseAct(_n(r, 6, 4, dtype=F32), _n(r, 4, dtype=F32), "identity"),
         dtype=F32, input_shape=(5, 6), note="float32 params and input"),
    Case("dense_tanh_f32", "layer",
         lambda r: DenseAct(_n(r, 6, 4, dtype=F32), _n(r, 4, dtype=F32), "tanh"),
         dtype=F32, input_shape=(5, 6), note="float32 params and input"),
    Case("softmax_f32", "layer", lambda r: Softmax(),
         dtype=F32, inputs=lambda r: _n(r, 3, 7, scale=3.0, dtype=F32),
         note="parameter-free, float32 input"),
    Case("layernorm_f32", "layer",
         lambda r: LayerNorm(_n(r, 6, dtype=F32) + F32(1), _n(r, 6, dtype=F32)),
         dtype=F32, input_shape=(4, 6), note="float32 layer norm"),
    Case("conv2d_f32", "layer",
         lambda r: Conv2D(_n(r, 3, 2, 3, 3, scale=0.5, dtype=F32), _n(r, 3, dtype=F32)),
         dtype=F32, input_shape=(2, 2, 5, 5), note="float32 conv"),
    Case("f32_internal_cast", "layer",
         lambda r: F32InternalCast(_n(r, 4, 3), _n(r, 3)),
         input_shape=(5, 4),
         note="float64 in, float32 arithmetic inside: FD in float64 sees float32 noise"),
    Case("layernorm_tiny_variance", "layer",
         lambda r: LayerNorm(_n(r, 6) + 1.0, _n(r, 6), eps=1e-5),
         inputs=lambda r: 5.0 + _n(r, 4, 6, scale=1e-3),
         note="row variance ~1e-6 < eps=1e-5 at offset 5: cancellation in x - mean"),
    Case("batchnorm_train", "layer",
         lambda r: BatchNormTrain(_n(r, 3) + 1.0, _n(r, 3)),
         input_shape=(8, 3), note="batch statistics couple every row"),
    Case("conv2d_f64", "layer",
         lambda r: Conv2D(_n(r, 4, 3, 3, 3, scale=0.5), _n(r, 4)),
         input_shape=(2, 3, 6, 6), note="float64 conv"),
    Case("deep_tanh_10", "layer",
         lambda r: DeepTanh([_n(r, 5, 5, scale=1.2 / np.sqrt(5)) for _ in range(10)],
                            [_n(r, 5, scale=0.1) for _ in range(10)]),
         input_shape=(3, 5), note="10 tanh layers: long chains, small deep gradients"),
    Case("wide_dense_5k", "layer",
         lambda r: DenseAct(_n(r, 100, 50, scale=0.1), _n(r, 50, scale=0.1), "tanh"),
         input_shape=(2, 100), note="P = 5050 parameters"),
    Case("attention", "layer",
         lambda r: Attention(*[_n(r, 3, 3) for _ in range(4)]),
         input_shape=(4, 3), note="x enters through q, k and v"),
    Case("lstm_cell", "layer", _lstm, input_shape=(2, 3), note="four gates"),
    Case("gru_cell", "layer", _gru, input_shape=(2, 3), note="reset gate inside tanh"),
    Case("embedding_repeated_indices", "layer",
         lambda r: EmbeddingScale(_n(r, 5, 4), idx=[1, 3, 1, 1, 0, 3]),
         input_shape=(6, 4), note="rows 1 and 3 used repeatedly; row 2, 4 unused (zero grad)"),
    Case("polynomial_degree_15", "layer",
         lambda r: Polynomial(_n(r, 16)),
         input_shape=(3, 4), note="x**15: values up to ~1e7 for |x| ~ 3"),
    Case("column_scales_1e-6_to_1e6", "layer",
         lambda r: DenseAct(_n(r, 4, 5), _n(r, 5), "tanh",
                            col_scale=np.array([1e-6, 1e-3, 1.0, 1e3, 1e6])),
         input_shape=(3, 4),
         note="output columns differ by 1e12: the big column swamps any projection"),
    Case("scalar_0d_layer", "layer",
         lambda r: ScalarSinLayer(np.asarray(1.3 + 0.1 * r.standard_normal())),
         input_shape=(), note="0-d input and parameter; returns numpy scalars"),
    Case("scalar_loss_softmax_xent", "layer",
         lambda r: SoftmaxXentLoss(_n(r, 4, 3), _n(r, 3), labels=[0, 2, 1, 2, 0]),
         input_shape=(5, 4), note="0-d output, dy is a scalar"),
)


PAIR_CASES: tuple[Case, ...] = (
    Case("relu_all_negative", "pair", lambda r: _relu_pair(),
         inputs=lambda r: (-r.uniform(0.5, 3.0, (4, 5)),),
         note="gradient exactly zero, inputs >= 0.5 away from the kink"),
    Case("sigmoid_saturated_pm20", "pair", lambda r: _sigmoid_pair(),
         inputs=lambda r: (_signs(r, (4, 5)) * r.uniform(15, 25, (4, 5)),),
         note="sigmoid' in 1e-11..1e-7 or exactly 0"),
    Case("tanh_f32_pair", "pair", lambda r: _tanh_pair(), dtype=F32,
         inputs=lambda r: (_n(r, 4, 5, scale=2.0, dtype=F32),),
         note="float32 elementwise"),
    Case("softmax_logits_pm50", "pair", lambda r: _softmax_pair(),
         inputs=lambda r: (r.uniform(-50, 50, (3, 6)),),
         note="probabilities down to ~e^-100"),
    Case("log_softmax_large_gaps", "pair", lambda r: _log_softmax_pair(),
         inputs=lambda r: (_n(r, 3, 5, scale=1000.0),),
         note="|x| ~ 1e3, log-probabilities ~ -1e3"),
    Case("logsumexp_offset_1e4", "pair", lambda r: _logsumexp_pair(),
         inputs=lambda r: (1e4 + _n(r, 3, 5, scale=2.0),),
         note="|x| ~ 1e4 but varies on scale 1: a |x|-relative step is too big"),
    Case("exp_near_30", "pair", lambda r: _exp_pair(),
         inputs=lambda r: (30.0 + _n(r, 6, scale=0.5),),
         note="values and gradients ~1e13"),
    Case("log_near_1e-3", "pair", lambda r: _log_pair(),
         inputs=lambda r: (1e-3 * r.uniform(0.5, 2.0, 6),),
         note="domain edge 0 is ~5e-4 away; gradient ~1e3"),
    Case("reciprocal_small_x", "pair", lambda r: _reciprocal_pair(),
         inputs=lambda r: (_signs(r, 6) * r.uniform(1e-3, 3e-3, 6),),
         note="pole at 0 is ~1e-3 away; gradient up to -1e6"),
    Case("cumsum", "pair", lambda r: _cumsum_pair(),
         inputs=lambda r: (_n(r, 3, 5),), note="triangular Jacobian"),
    Case("cumprod", "pair", lambda r: _cumprod_pair(),
         inputs=lambda r: (_signs(r, (3, 6)) * r.uniform(0.5, 1.5, (3, 6)),),
         note="division-free backward"),
    Case("max_large_gaps", "pair", lambda r: _max_pair(),
         inputs=lambda r: (_distinct_gaps(r),), note="no ties: max leads by >= 9"),
    Case("exp_gradients_1e-8_to_1e8", "pair", lambda r: _exp_pair(),
         inputs=lambda r: (np.linspace(-18.4, 18.4, 12) + _n(r, 12, scale=0.01),),
         note="one tensor, gradients from ~1e-8 to ~1e8"),
    Case("scalar_0d_pair", "pair", lambda r: _scalar_pair(),
         inputs=lambda r: (np.asarray(0.7 + 0.1 * r.standard_normal()),),
         note="0-d input, 0-d output"),
    Case("mse_scalar_loss", "pair", lambda r: _mse_pair(),
         inputs=lambda r: (_n(r, 4, 3), _n(r, 4, 3)),
         note="two inputs, 0-d output"),
    Case("broadcast_affine", "pair", lambda r: _broadcast_affine_pair(),
         inputs=lambda r: (_n(r, 3, 4), _n(r, 4), _n(r, 1, 4)),
         note="gradients summed back over broadcast axes"),
)


CASES: tuple[Case, ...] = LAYER_CASES + PAIR_CASES


def by_name(name: str) -> Case:
    """Return the case called ``name``; cost: O(len(CASES))."""
    for c in CASES:
        if c.name == name:
            return c
    raise KeyError(name)


assert len({c.name for c in CASES}) == len(CASES), "duplicate case names"
