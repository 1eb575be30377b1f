"""The mutation suite: realistic backward bugs, each paired with its correct twin.

Every layer and function pair below is written once, with a ``bug`` flag: the
correct line and the buggy line sit side by side, so each bug is one realistic
edit of otherwise correct code (a transpose, a missing factor, a sign, a
statistic treated as a constant, an ``=`` where ``+=`` was meant...). The
corpus is plain numpy and does not import gradverify at module import; the
:meth:`Entry.check` helper imports it when called.

Two protocols are covered (see SPEC.md, C7):

* ``kind == "layer"`` -- the numpy object protocol: ``layer.params`` (dict of
  arrays, may be empty), ``layer.forward(x)`` caching what it needs on
  ``self``, ``layer.backward(dy) -> dx`` which also sets ``layer.grads``
  (one entry per params key). The input is named ``"x"``.
* ``kind == "pair"`` -- ``forward(*inputs) -> (out, cache)`` and
  ``backward(dout, cache) -> tuple`` with one gradient per input. Inputs are
  named by ``forward``'s parameter names.

Each :class:`Entry` says where the bug is expected: the input or parameter
whose gradient is wrong (``expected_input``) and, for single-element bugs,
the element (``expected_index``). Every bug corrupts the gradient of exactly
one input or parameter, so "where" has one right answer -- except where the
bug itself corrupts several (truncated BPTT), in which case
``expected_input`` is a tuple of the acceptable names.

Cost: building an entry is microseconds; every layer is tiny (at most a few
hundred elements) so a full-Jacobian check of the whole corpus stays cheap.

Public names: :data:`BUGS`, :data:`TWINS`, :data:`ENTRIES`, :func:`by_name`,
:func:`twin_of`, :class:`Entry`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np

__all__ = ["Entry", "BUGS", "TWINS", "ENTRIES", "by_name", "twin_of"]


# --------------------------------------------------------------------------
# small helpers
# --------------------------------------------------------------------------

def _rng(seed: int) -> np.random.Generator:
    return np.random.default_rng(seed)


def _zeros_like_params(params: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    return {k: np.zeros_like(v) for k, v in params.items()}


_erf = np.vectorize(math.erf, otypes=[np.float64])


def _sigmoid(x: np.ndarray) -> np.ndarray:
    # Stable for large |x|; keeps x's dtype.
    return np.where(x >= 0, 1.0 / (1.0 + np.exp(-np.abs(x))),
                    np.exp(-np.abs(x)) / (1.0 + np.exp(-np.abs(x)))).astype(x.dtype, copy=False)


def _softmax(z: np.ndarray, axis: int = -1) -> np.ndarray:
    e = np.exp(z - z.max(axis=axis, keepdims=True))
    return e / e.sum(axis=axis, keepdims=True)


# --------------------------------------------------------------------------
# layers (numpy object protocol)
# --------------------------------------------------------------------------

class Dense:
    """y = x @ W + b for x of shape (N, n_in).

    Bugs: ``"dx_transpose"`` (dy @ W instead of dy @ W.T; W square so shapes
    still fit), ``"dW_transpose"`` ((x.T @ dy).T; W square), ``"db_mean"``
    (bias gradient averaged over the batch instead of summed),
    ``"db_not_stored"`` (db computed into a local and never written back, so
    grads["b"] keeps its zero initialisation), ``"dW_single_element"``
    (grads["W"][2, 1] scaled by 1.001: a 0.1% error in one element).
    """

    def __init__(self, n_in: int, n_out: int, *, seed: int = 0, bug: str | None = None):
        rng = _rng(seed)
        self.params = {
            "W": rng.standard_normal((n_in, n_out)) / np.sqrt(n_in),
            "b": 0.1 * rng.standard_normal(n_out),
        }
        self.grads = _zeros_like_params(self.params)
        self.bug = bug

    def forward(self, x):
        self.x = x
        return x @ self.params["W"] + self.params["b"]

    def backward(self, dy):
        W = self.params["W"]
        if self.bug == "dW_transpose":
            self.grads["W"] = (self.x.T @ dy).T          # BUG: transposed
        else:
            self.grads["W"] = self.x.T @ dy
        if self.bug == "dW_single_element":
            self.grads["W"][2, 1] *= 1.001               # BUG: 0.1% off in one element
        db = dy.sum(axis=0)
        if self.bug == "db_mean":
            db = dy.mean(axis=0)                         # BUG: mean over the batch
        if self.bug != "db_not_stored":                  # BUG: the store line is missing
            self.grads["b"] = db
        if self.bug == "dx_transpose":
            return dy @ W                                # BUG: W instead of W.T
        return dy @ W.T


class LayerScaleLinear:
    """y = x + gamma * (x @ W): a residual branch scaled by a tiny LayerScale.

    gamma is initialised near 1e-5 (CaiT-style), so the output barely uses W
    and every element of dW is ~1e-5 in size: an absolute tolerance alone
    would wave through any bug in dW.

    Bug ``"dW_gamma_axis"``: gamma applied along the wrong axis of dW,
    (x.T @ dy) * gamma[:, None] instead of (x.T @ dy) * gamma[None, :]. W is
    square, so the broadcast still fits.
    """

    def __init__(self, d: int, *, seed: int = 0, bug: str | None = None):
        rng = _rng(seed)
        self.params = {
            "W": rng.standard_normal((d, d)) / np.sqrt(d),
            # a few steps into training: per-channel values around 1e-5
            "gamma": 1e-5 * (1.0 + 0.5 * rng.standard_normal(d)),
        }
        self.grads = _zeros_like_params(self.params)
        self.bug = bug

    def forward(self, x):
        self.x = x
        self.h = x @ self.params["W"]
        return x + self.params["gamma"] * self.h

    def backward(self, dy):
        W, gamma = self.params["W"], self.params["gamma"]
        self.grads["gamma"] = (dy * self.h).sum(axis=0)
        if self.bug == "dW_gamma_axis":
            self.grads["W"] = (self.x.T @ dy) * gamma[:, None]   # BUG: wrong axis
        else:
            self.grads["W"] = (self.x.T @ dy) * gamma[None, :]
        return dy + (dy * gamma) @ W.T


class Square:
    """y = x ** 2 (e.g. an energy term). Bug ``"missing_2"``: dx = dy * x."""

    def __init__(self, *, bug: str | None = None):
        self.params = {}
        self.grads = {}
        self.bug = bug

    def forward(self, x):
        self.x = x
        return x * x

    def backward(self, dy):
        if self.bug == "missing_2":
            return dy * self.x                           # BUG: factor 2 forgotten
        return 2.0 * dy * self.x


class GlobalAvgPool:
    """y[n, c] = mean over (H, W) of x[n, c]. Bug ``"missing_1_over_N"``."""

    def __init__(self, *, bug: str | None = None):
        self.params = {}
        self.grads = {}
        self.bug = bug

    def forward(self, x):
        self.shape = x.shape
        return x.mean(axis=(2, 3))

    def backward(self, dy):
        H, W = self.shape[2], self.shape[3]
        dx = np.ones(self.shape, dtype=dy.dtype) * dy[:, :, None, None]
        if self.bug == "missing_1_over_N":
            return dx                                    # BUG: 1/(H*W) forgotten
        return dx / (H * W)


class BatchNorm:
    """Batch normalisation, training mode, x of shape (N, D).

    Bug ``"stats_constant"``: the batch mean and variance treated as
    constants, dx = dy * gamma / sqrt(var + eps) (the two terms that flow
    through the statistics are missing). dgamma and dbeta stay right.
    """

    def __init__(self, d: int, *, seed: int = 0, eps: float = 1e-5, bug: str | None = None):
        rng = _rng(seed)
        self.params = {"gamma": 1.0 + 0.3 * rng.standard_normal(d),
                       "beta": 0.3 * rng.standard_normal(d)}
        self.grads = _zeros_like_params(self.params)
        self.eps = eps
        self.bug = bug

    def forward(self, x):
        mu = x.mean(axis=0)
        var = x.var(axis=0)
        self.inv = 1.0 / np.sqrt(var + self.eps)
        self.xhat = (x - mu) * self.inv
        return self.params["gamma"] * self.xhat + self.params["beta"]

    def backward(self, dy):
        N = dy.shape[0]
        self.grads["gamma"] = (dy * self.xhat).sum(axis=0)
        self.grads["beta"] = dy.sum(axis=0)
        dxhat = dy * self.params["gamma"]
        if self.bug == "stats_constant":
            return dxhat * self.inv                      # BUG: no gradient through mean/var
        return (self.inv / N) * (N * dxhat - dxhat.sum(axis=0)
                                 - self.xhat * (dxhat * self.xhat).sum(axis=0))


class LayerNorm:
    """Layer normalisation over the last axis, x of shape (N, D).

    Bug ``"stats_constant"``: per-row mean and variance treated as constants.
    """

    def __init__(self, d: int, *, seed: int = 0, eps: float = 1e-5, bug: str | None = None):
        rng = _rng(seed)
        self.params = {"gamma": 1.0 + 0.3 * rng.standard_normal(d),
                       "beta": 0.3 * rng.standard_normal(d)}
        self.grads = _zeros_like_params(self.params)
        self.eps = eps
        self.bug = bug

    def forward(self, x):
        mu = x.mean(axis=-1, keepdims=True)
        var = x.var(axis=-1, keepdims=True)
        self.inv = 1.0 / np.sqrt(var + self.eps)
        self.xhat = (x - mu) * self.inv
        return self.params["gamma"] * self.xhat + self.params["beta"]

    def backward(self, dy):
        D = dy.shape[-1]
        self.grads["gamma"] = (dy * self.xhat).sum(axis=0)
        self.grads["beta"] = dy.sum(axis=0)
        dxhat = dy * self.params["gamma"]
        if self.bug == "stats_constant":
            return dxhat * self.inv                      # BUG: no gradient through mean/var
        return (self.inv / D) * (D * dxhat - dxhat.sum(axis=-1, keepdims=True)
                                 - self.xhat * (dxhat * self.xhat).sum(axis=-1, keepdims=True))


class Softmax:
    """Softmax over the last axis. Bug ``"diagonal_only"``: dy * s * (1 - s)."""

    def __init__(self, *, bug: str | None = None):
        self.params = {}
        self.grads = {}
        self.bug = bug

    def forward(self, x):
        self.s = _softmax(x)
        return self.s

    def backward(self, dy):
        s = self.s
        if self.bug == "diagonal_only":
            return dy * s * (1.0 - s)                    # BUG: Jacobian diagonal only
        return s * (dy - (dy * s).sum(axis=-1, keepdims=True))


class LogSoftmax:
    """log_softmax over the last axis.

    Bug ``"drops_dy_sum"``: dx = dy - softmax, right only when each row of dy
    sums to one (as it does for a one-hot cross-entropy cotangent); a random
    cotangent exposes it.
    """

    def __init__(self, *, bug: str | None = None):
        self.params = {}
        self.grads = {}
        self.bug = bug

    def forward(self, x):
        z = x - x.max(axis=-1, keepdims=True)
        out = z - np.log(np.exp(z).sum(axis=-1, keepdims=True))
        self.s = np.exp(out)
        return out

    def backward(self, dy):
        if self.bug == "drops_dy_sum":
            return dy - self.s                           # BUG: assumes sum(dy) == 1
        return dy - self.s * dy.sum(axis=-1, keepdims=True)


class VanillaRNN:
    """h_t = tanh(x_t @ Wx + h_{t-1} @ Wh + b), h_{-1} = 0; x is (N, T, D).

    The output is the whole sequence of hidden states, (N, T, H).

    Bugs: ``"truncated_bptt"`` (the backward loop only visits the last
    ``k = 2`` steps, so earlier inputs get no gradient and the weight
    gradients miss the earlier steps' terms -- every gradient is wrong),
    ``"dWh_off_by_one"`` (dWh accumulates h_t instead of h_{t-1}; only dWh
    is wrong).
    """

    def __init__(self, d: int, h: int, *, seed: int = 0, bug: str | None = None, k: int = 2):
        rng = _rng(seed)
        self.params = {
            "Wx": rng.standard_normal((d, h)) / np.sqrt(d),
            "Wh": 0.8 * rng.standard_normal((h, h)) / np.sqrt(h),
            "b": 0.1 * rng.standard_normal(h),
        }
        self.grads = _zeros_like_params(self.params)
        self.bug = bug
        self.k = k

    def forward(self, x):
        Wx, Wh, b = self.params["Wx"], self.params["Wh"], self.params["b"]
        N, T, _ = x.shape
        H = Wh.shape[0]
        hs = np.zeros((N, T, H), dtype=np.result_type(x, Wx))
        h = np.zeros((N, H), dtype=hs.dtype)
        for t in range(T):
            h = np.tanh(x[:, t] @ Wx + h @ Wh + b)
            hs[:, t] = h
        self.x, self.hs = x, hs
        return hs

    def backward(self, dy):
        Wx, Wh = self.params["Wx"], self.params["Wh"]
        x, hs = self.x, self.hs
        N, T, H = hs.shape
        dx = np.zeros_like(x)
        dWx, dWh, db = np.zeros_like(Wx), np.zeros_like(Wh), np.zeros_like(self.params["b"])
        dh_next = np.zeros((N, H), dtype=hs.dtype)
        first = 0
        if self.bug == "truncated_bptt":
            first = max(0, T - self.k)                   # BUG: only the last k steps
        for t in reversed(range(first, T)):
            h_prev = hs[:, t - 1] if t > 0 else np.zeros((N, H), dtype=hs.dtype)
            da = (dy[:, t] + dh_next) * (1.0 - hs[:, t] ** 2)
            dx[:, t] = da @ Wx.T
            dWx += x[:, t].T @ da
            if self.bug == "dWh_off_by_one":
                dWh += hs[:, t].T @ da                   # BUG: h_t instead of h_{t-1}
            else:
                dWh += h_prev.T @ da
            db += da.sum(axis=0)
            dh_next = da @ Wh.T
        self.grads = {"Wx": dWx, "Wh": dWh, "b": db}
        return dx


class Conv2d:
    """2-D convolution (cross-correlation), NCHW, weights (F, C, KH, KW).

    Written as a loop over kernel offsets, each a strided slice of the
    padded input. Bugs: ``"dx_padding_offset"`` (the padded input gradient
    is cropped at [0:H] instead of [pad:pad+H] -- an off-by-one in the
    backward's padding), ``"dW_stride_forgotten"`` (the dW slice steps by 1
    instead of by the stride; shapes still fit).
    """

    def __init__(self, c: int, f: int, k: int, *, stride: int = 1, pad: int = 0,
                 seed: int = 0, bug: str | None = None):
        rng = _rng(seed)
        self.params = {"W": rng.standard_normal((f, c, k, k)) / np.sqrt(c * k * k),
                       "b": 0.1 * rng.standard_normal(f)}
        self.grads = _zeros_like_params(self.params)
        self.stride, self.pad, self.bug = stride, pad, bug

    def _out_hw(self, H, W):
        _, _, KH, KW = self.params["W"].shape
        s, p = self.stride, self.pad
        return (H + 2 * p - KH) // s + 1, (W + 2 * p - KW) // s + 1

    def forward(self, x):
        Wt, b = self.params["W"], self.params["b"]
        s, p = self.stride, self.pad
        F, _, KH, KW = Wt.shape
        N, _, H, W = x.shape
        OH, OW = self._out_hw(H, W)
        xp = np.pad(x, ((0, 0), (0, 0), (p, p), (p, p)))
        out = np.zeros((N, F, OH, OW), dtype=np.result_type(x, Wt))
        for i in range(KH):
            for j in range(KW):
                patch = xp[:, :, i:i + s * OH:s, j:j + s * OW:s]
                out += np.einsum("nchw,fc->nfhw", patch, Wt[:, :, i, j])
        self.x, self.xp = x, xp
        return out + b[None, :, None, None]

    def backward(self, dout):
        Wt = self.params["W"]
        s, p = self.stride, self.pad
        _, _, KH, KW = Wt.shape
        N, C, H, W = self.x.shape
        OH, OW = dout.shape[2], dout.shape[3]
        xp = self.xp
        dW = np.zeros_like(Wt)
        dxp = np.zeros_like(xp)
        for i in range(KH):
            for j in range(KW):
                if self.bug == "dW_stride_forgotten":
                    patch = xp[:, :, i:i + OH, j:j + OW]             # BUG: stride dropped
                else:
                    patch = xp[:, :, i:i + s * OH:s, j:j + s * OW:s]
                dW[:, :, i, j] = np.einsum("nfhw,nchw->fc", dout, patch)
                dxp[:, :, i:i + s * OH:s, j:j + s * OW:s] += np.einsum(
                    "nfhw,fc->nchw", dout, Wt[:, :, i, j])
        self.grads = {"W": dW, "b": dout.sum(axis=(0, 2, 3))}
        if self.bug == "dx_padding_offset":
            return dxp[:, :, :H, :W].copy()                         # BUG: crop at 0, not pad
        return dxp[:, :, p:p + H, p:p + W].copy()


class MaxPool2d:
    """Max pooling, NCHW, k x k windows with stride s (overlapping if s < k).

    Written cs231n-style as a loop over output positions. Bugs:
    ``"first_element"`` (the gradient of each window goes to its top-left
    element instead of its argmax), ``"overwrite_overlap"`` (``=`` instead
    of ``+=`` when writing a window's gradient back, so overlapping windows
    overwrite each other's contributions).
    """

    def __init__(self, k: int = 2, stride: int = 2, *, bug: str | None = None):
        self.params = {}
        self.grads = {}
        self.k, self.stride, self.bug = k, stride, bug

    def forward(self, x):
        k, s = self.k, self.stride
        N, C, H, W = x.shape
        OH, OW = (H - k) // s + 1, (W - k) // s + 1
        out = np.empty((N, C, OH, OW), dtype=x.dtype)
        for oh in range(OH):
            for ow in range(OW):
                out[:, :, oh, ow] = x[:, :, oh * s:oh * s + k, ow * s:ow * s + k].max(axis=(2, 3))
        self.x = x
        return out

    def backward(self, dout):
        k, s, x = self.k, self.stride, self.x
        dx = np.zeros_like(x)
        OH, OW = dout.shape[2], dout.shape[3]
        for oh in range(OH):
            for ow in range(OW):
                win = x[:, :, oh * s:oh * s + k, ow * s:ow * s + k]
                if self.bug == "first_element":
                    mask = np.zeros_like(win)
                    mask[:, :, 0, 0] = 1.0                          # BUG: first, not argmax
                else:
                    mask = (win == win.max(axis=(2, 3), keepdims=True)).astype(x.dtype)
                g = mask * dout[:, :, oh, ow][:, :, None, None]
                if self.bug == "overwrite_overlap":
                    dx[:, :, oh * s:oh * s + k, ow * s:ow * s + k] = g   # BUG: = not +=
                else:
                    dx[:, :, oh * s:oh * s + k, ow * s:ow * s + k] += g
        return dx


class GELU:
    """Exact GELU, x * Phi(x).

    Bug ``"tanh_approx_backward"``: the forward is the exact (erf) GELU but
    the backward is the derivative of the tanh approximation
    0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3))) -- a mismatch of about
    1e-3 relative where the two differ most.
    """

    def __init__(self, *, bug: str | None = None):
        self.params = {}
        self.grads = {}
        self.bug = bug

    def forward(self, x):
        self.x = x
        return (0.5 * x * (1.0 + _erf(x / math.sqrt(2.0)))).astype(x.dtype, copy=False)

    def backward(self, dy):
        x = self.x
        if self.bug == "tanh_approx_backward":               # BUG: other approximation
            c = math.sqrt(2.0 / math.pi)
            u = c * (x + 0.044715 * x ** 3)
            t = np.tanh(u)
            d = 0.5 * (1.0 + t) + 0.5 * x * (1.0 - t * t) * c * (1.0 + 3 * 0.044715 * x ** 2)
        else:
            cdf = 0.5 * (1.0 + _erf(x / math.sqrt(2.0)))
            pdf = np.exp(-0.5 * x * x) / math.sqrt(2.0 * math.pi)
            d = cdf + x * pdf
        return (dy * d).astype(x.dtype, copy=False)


class Softplus:
    """softplus(x) = log(1 + e^x). Bug ``"ignores_dy"``: returns sigmoid(x)."""

    def __init__(self, *, bug: str | None = None):
        self.params = {}
        self.grads = {}
        self.bug = bug

    def forward(self, x):
        self.x = x
        return np.logaddexp(0.0, x)

    def backward(self, dy):
        if self.bug == "ignores_dy":
            return _sigmoid(self.x)                      # BUG: the gradient for dy = 1
        return dy * _sigmoid(self.x)


class CachedTanh:
    """tanh whose forward caches its output for the backward.

    Bug ``"stale_cache"``: the cache is filled only when it is empty (a lazy
    allocation meant to reuse the buffer), so after a first batch the
    backward keeps using that batch's output. The corpus factory runs one
    forward on an earlier batch first, as training would have.
    """

    def __init__(self, *, bug: str | None = None):
        self.params = {}
        self.grads = {}
        self.bug = bug
        self.y = None

    def forward(self, x):
        y = np.tanh(x)
        if self.bug == "stale_cache":
            if self.y is None:                           # BUG: cache set on first call only
                self.y = y
        else:
            self.y = y
        return y

    def backward(self, dy):
        return dy * (1.0 - self.y ** 2)


class Sigmoid:
    """Logistic sigmoid. Bug ``"s_times_1_plus_s"``: s * (1 + s) for s'."""

    def __init__(self, *, bug: str | None = None):
        self.params = {}
        self.grads = {}
        self.bug = bug

    def forward(self, x):
        self.s = _sigmoid(x)
        return self.s

    def backward(self, dy):
        s = self.s
        if self.bug == "s_times_1_plus_s":
            return dy * s * (1.0 + s)                    # BUG: sign inside
        return dy * s * (1.0 - s)


class LeakyReLU:
    """Leaky ReLU with slope alpha = 0.2 on the negative side.

    Bug ``"hardcoded_slope"``: the backward uses the usual default 0.01
    instead of ``self.alpha``.
    """

    def __init__(self, alpha: float = 0.2, *, bug: str | None = None):
        self.params = {}
        self.grads = {}
        self.alpha = alpha
        self.bug = bug

    def forward(self, x):
        self.x = x
        return np.where(x > 0, x, self.alpha * x)

    def backward(self, dy):
        slope = 0.01 if self.bug == "hardcoded_slope" else self.alpha   # BUG: 0.01
        return dy * np.where(self.x > 0, 1.0, slope)


class LeCunTanh:
    """LeCun's scaled tanh 1.7159 tanh(2x/3), float32.

    Bug ``"constant_1pct"``: the backward types the inner factor 2/3 as 0.66
    (1% off), so the only derivative is 1% low everywhere.
    """

    A = 1.7159

    def __init__(self, *, bug: str | None = None):
        self.params = {}
        self.grads = {}
        self.bug = bug

    def forward(self, x):
        self.t = np.tanh(x * (2.0 / 3.0))
        return self.A * self.t

    def backward(self, dy):
        inner = 0.66 if self.bug == "constant_1pct" else 2.0 / 3.0      # BUG: 0.66
        return dy * (self.A * inner) * (1.0 - self.t * self.t)


class Huber:
    """Huber function with threshold delta = 0.5, elementwise.

    Bug ``"wrong_delta"``: the backward clips at +-1 (the default delta)
    instead of +-self.delta.
    """

    def __init__(self, delta: float = 0.5, *, bug: str | None = None):
        self.params = {}
        self.grads = {}
        self.delta = delta
        self.bug = bug

    def forward(self, x):
        self.x = x
        d = self.delta
        a = np.abs(x)
        return np.where(a <= d, 0.5 * x * x, d * (a - 0.5 * d))

    def backward(self, dy):
        d = 1.0 if self.bug == "wrong_delta" else self.delta            # BUG: 1.0
        return dy * np.clip(self.x, -d, d)


class Embedding:
    """Embedding lookup y = W[idx] for an integer index array.

    Bug ``"overwrite_repeats"``: ``dW[idx] += dy`` -- numpy's buffered fancy
    indexing keeps only one contribution per repeated index instead of
    accumulating (``np.add.at``). The input is integer and has no gradient;
    ``backward`` returns ``None`` for it.
    """

    def __init__(self, vocab: int, d: int, *, seed: int = 0, bug: str | None = None):
        rng = _rng(seed)
        self.params = {"W": rng.standard_normal((vocab, d))}
        self.grads = _zeros_like_params(self.params)
        self.bug = bug

    def forward(self, idx):
        self.idx = idx
        return self.params["W"][idx]

    def backward(self, dy):
        dW = np.zeros_like(self.params["W"])
        if self.bug == "overwrite_repeats":
            dW[self.idx] += dy                           # BUG: repeats overwrite
        else:
            np.add.at(dW, self.idx, dy)
        self.grads["W"] = dW
        return None


# --------------------------------------------------------------------------
# function pairs: forward(*inputs) -> (out, cache); backward(dout, cache) -> tuple
# --------------------------------------------------------------------------

def make_attention(bug: str | None = None):
    """Scaled dot-product attention softmax(q k^T / sqrt(d)) v.

    Bug ``"dq_missing_scale"``: dq = dS @ k without the 1/sqrt(d) (dk keeps it).
    """

    def attention_forward(q, k, v):
        scale = 1.0 / math.sqrt(q.shape[-1])
        P = _softmax((q @ k.T) * scale)
        return P @ v, (q, k, v, P, scale)

    def attention_backward(dout, cache):
        q, k, v, P, scale = cache
        dv = P.T @ dout
        dP = dout @ v.T
        dS = P * (dP - (dP * P).sum(axis=-1, keepdims=True))
        if bug == "dq_missing_scale":
            dq = dS @ k                                  # BUG: 1/sqrt(d) forgotten
        else:
            dq = (dS @ k) * scale
        dk = (dS.T @ q) * scale
        return dq, dk, dv

    return attention_forward, attention_backward


def make_mse(bug: str | None = None):
    """mean((pred - target)^2), a scalar. Bug ``"target_sign"``: d/dtarget = +2r/N."""

    def mse_forward(pred, target):
        r = pred - target
        return np.asarray(np.mean(r * r)), (r,)

    def mse_backward(dout, cache):
        (r,) = cache
        dpred = dout * 2.0 * r / r.size
        if bug == "target_sign":
            dtarget = dpred                              # BUG: sign dropped
        else:
            dtarget = -dpred
        return dpred, dtarget

    return mse_forward, mse_backward


def make_ridge(lam: float = 0.1, bug: str | None = None):
    """0.5 mean((X w - t)^2) + 0.5 lam |w|^2. Bug ``"l2_forgotten"``: dw lacks lam w."""

    def ridge_forward(w, X, t):
        r = X @ w - t
        return np.asarray(0.5 * np.mean(r * r) + 0.5 * lam * (w @ w)), (w, X, r)

    def ridge_backward(dout, cache):
        w, X, r = cache
        n = r.shape[0]
        dw = X.T @ r / n
        if bug != "l2_forgotten":                        # BUG: regulariser term missing
            dw = dw + lam * w
        dX = np.outer(r, w) / n
        dt = -r / n
        return dout * dw, dout * dX, dout * dt

    return ridge_forward, ridge_backward


def make_cosine(bug: str | None = None):
    """Row-wise cosine similarity of a and b, (N, D) -> (N,).

    Bug ``"db_copy_paste"``: db copied from da and not fully edited:
    cos * b / |a|^2 instead of cos * b / |b|^2 (only the second input's
    gradient is wrong).
    """

    def cosine_forward(a, b):
        na = np.linalg.norm(a, axis=-1, keepdims=True)
        nb = np.linalg.norm(b, axis=-1, keepdims=True)
        cos = (a * b).sum(axis=-1, keepdims=True) / (na * nb)
        return cos[:, 0], (a, b, na, nb, cos)

    def cosine_backward(dout, cache):
        a, b, na, nb, cos = cache
        g = dout[:, None]
        da = g * (b / (na * nb) - cos * a / na ** 2)
        if bug == "db_copy_paste":
            db = g * (a / (na * nb) - cos * b / na ** 2)     # BUG: na where nb belongs
        else:
            db = g * (a / (na * nb) - cos * b / nb ** 2)
        return da, db

    return cosine_forward, cosine_backward


# --------------------------------------------------------------------------
# the corpus
# --------------------------------------------------------------------------

@dataclass(frozen=True)
class Entry:
    """One corpus entry: a buggy layer/pair or its correct twin.

    Attributes:
        name: unique id; a twin is named ``<bug name>__twin``.
        description: what the bug is (for a twin: what it is the twin of).
        kind: ``"layer"`` or ``"pair"``.
        factory: ``() -> layer`` for layers, ``() -> (forward, backward)`` for pairs.
            Each call builds a fresh object (seeded), so entries never share state.
        input_shape: for layers checked with ``check_layer(layer, input_shape)``.
        make_inputs: ``() -> array`` (layer) or ``() -> tuple of arrays`` (pair),
            seeded; used when ``input_shape`` is None.
        is_bug: True for a bug, False for a correct twin.
        twin: name of the counterpart entry.
        expected_input: where the bug is (a name, or a tuple of acceptable names
            where the bug corrupts several gradients); None for twins.
        expected_index: the element, for single-element bugs; else None.
        dtype: the dtype the layer runs in (informational).
    """

    name: str
    description: str
    kind: str
    factory: Callable[[], Any]
    input_shape: tuple[int, ...] | None = None
    make_inputs: Callable[[], Any] | None = None
    is_bug: bool = True
    twin: str = ""
    expected_input: str | tuple[str, ...] | None = None
    expected_index: tuple[int, ...] | None = None
    dtype: str = "float64"

    @property
    def expected_names(self) -> tuple[str, ...]:
        """The acceptable worst-element names as a tuple (empty for twins)."""
        if self.expected_input is None:
            return ()
        if isinstance(self.expected_input, str):
            return (self.expected_input,)
        return tuple(self.expected_input)

    def check(self, **kwargs):
        """Run the gradverify check for this entry (imports gradverify lazily).

        Cost: one gradverify check of a tiny layer -- O(number of elements)
        forward calls in full mode.
        """
        import gradverify as gv

        if self.kind == "layer":
            layer = self.factory()
            if self.input_shape is not None:
                return gv.check_layer(layer, self.input_shape, **kwargs)
            return gv.check_layer(layer, inputs=self.make_inputs(), **kwargs)
        forward, backward = self.factory()
        return gv.check_pair(forward, backward, self.make_inputs(), **kwargs)


def _normal(shape, seed, dtype=np.float64, scale=1.0):
    return lambda: (scale * _rng(seed).standard_normal(shape)).astype(dtype)


def _normals(*shapes, seed):
    def make():
        rng = _rng(seed)
        return tuple(rng.standard_normal(s) for s in shapes)
    return make


def _gelu_inputs():
    # On [0.5, 3.5] GELU' is between 0.9 and 1.13, and the exact and
    # tanh-approximate derivatives differ by at most 8.7e-4 (near x = 2), so
    # the per-element relative error is ~1e-3 at worst and ~1e-4 typically.
    # (On the negative tail GELU' -> 0 and the same absolute gap would be a
    # large *relative* error: that would test a different thing.)
    rng = _rng(11)
    return rng.uniform(0.5, 3.5, size=(4, 6))


def _stale_tanh(bug):
    layer = CachedTanh(bug=bug)
    layer.forward(_rng(12345).standard_normal((3, 5)))       # an earlier batch
    return layer


def _embedding_inputs():
    # Repeated indices on purpose: 1 and 3 appear several times.
    return np.array([[1, 3, 1, 0], [3, 2, 3, 1]])


def _ridge_inputs():
    rng = _rng(21)
    return (rng.standard_normal(4), rng.standard_normal((8, 4)), rng.standard_normal(8))


def _maxpool_inputs(shape, seed):
    # A random permutation scaled to unit steps: no ties anywhere, and every
    # pair of values is at least 0.05 apart, far from any kink.
    def make():
        rng = _rng(seed)
        n = int(np.prod(shape))
        return (0.05 * rng.permutation(n).reshape(shape) - 0.025 * n).astype(np.float64)
    return make


# name, description, kind, factory(bug) -> object, bug flag, input spec, expected, index, dtype
_SPECS: list[dict[str, Any]] = [
    dict(name="dense_dx_transpose",
         description="Dense layer, square W: dx = dy @ W instead of dy @ W.T",
         kind="layer", build=lambda bug: Dense(5, 5, seed=1, bug=bug), bug="dx_transpose",
         input_shape=(6, 5), expected="x"),
    dict(name="dense_dW_transpose",
         description="Dense layer, square W: dW = (x.T @ dy).T",
         kind="layer", build=lambda bug: Dense(5, 5, seed=2, bug=bug), bug="dW_transpose",
         input_shape=(6, 5), expected="W"),
    dict(name="dense_db_mean",
         description="Dense layer: bias gradient is dy.mean(0) instead of dy.sum(0)",
         kind="layer", build=lambda bug: Dense(4, 3, seed=3, bug=bug), bug="db_mean",
         input_shape=(6, 4), expected="b"),
    dict(name="dense_db_not_stored",
         description="Dense layer: db computed but never stored; grads['b'] stays zeros",
         kind="layer", build=lambda bug: Dense(4, 3, seed=4, bug=bug), bug="db_not_stored",
         input_shape=(6, 4), expected="b"),
    dict(name="dense_dW_single_element",
         description="Dense layer: grads['W'][2, 1] *= 1.001 (0.1% error in one element)",
         kind="layer", build=lambda bug: Dense(4, 3, seed=5, bug=bug), bug="dW_single_element",
         input_shape=(6, 4), expected="W", index=(2, 1)),
    dict(name="layerscale_dW_gamma_axis",
         description="LayerScale residual (gamma ~ 1e-5): gamma on the wrong axis of dW; "
                     "every dW element is ~1e-5, so the error is tiny in absolute terms",
         kind="layer", build=lambda bug: LayerScaleLinear(4, seed=6, bug=bug), bug="dW_gamma_axis",
         input_shape=(5, 4), expected="W"),
    dict(name="square_missing_2",
         description="y = x**2: dx = dy * x (factor 2 missing)",
         kind="layer", build=lambda bug: Square(bug=bug), bug="missing_2",
         input_shape=(3, 4), expected="x"),
    dict(name="avgpool_missing_1_over_N",
         description="global average pooling: dx = dy broadcast, 1/(H*W) missing",
         kind="layer", build=lambda bug: GlobalAvgPool(bug=bug), bug="missing_1_over_N",
         input_shape=(2, 3, 3, 3), expected="x"),
    dict(name="batchnorm_stats_constant",
         description="batch norm (training): mean and variance treated as constants in dx",
         kind="layer", build=lambda bug: BatchNorm(4, seed=7, bug=bug), bug="stats_constant",
         input_shape=(6, 4), expected="x"),
    dict(name="layernorm_stats_constant",
         description="layer norm: mean and variance treated as constants in dx",
         kind="layer", build=lambda bug: LayerNorm(5, seed=8, bug=bug), bug="stats_constant",
         input_shape=(4, 5), expected="x"),
    dict(name="softmax_diagonal_only",
         description="softmax: dx = dy * s * (1 - s), the Jacobian's diagonal only",
         kind="layer", build=lambda bug: Softmax(bug=bug), bug="diagonal_only",
         input_shape=(3, 5), expected="x"),
    dict(name="log_softmax_drops_dy_sum",
         description="log_softmax: dx = dy - softmax (assumes each row of dy sums to 1)",
         kind="layer", build=lambda bug: LogSoftmax(bug=bug), bug="drops_dy_sum",
         input_shape=(3, 5), expected="x"),
    dict(name="rnn_truncated_bptt",
         description="vanilla RNN: backward visits only the last k=2 of T=5 steps",
         kind="layer", build=lambda bug: VanillaRNN(3, 4, seed=9, bug=bug), bug="truncated_bptt",
         input_shape=(2, 5, 3), expected=("x", "Wx", "Wh", "b")),
    dict(name="rnn_dWh_off_by_one",
         description="vanilla RNN: dWh accumulates h_t instead of h_{t-1}",
         kind="layer", build=lambda bug: VanillaRNN(3, 4, seed=10, bug=bug), bug="dWh_off_by_one",
         input_shape=(2, 4, 3), expected="Wh"),
    dict(name="conv_dx_padding_offset",
         description="conv2d pad=1: padded input gradient cropped at [0:H] instead of [1:H+1]",
         kind="layer",
         build=lambda bug: Conv2d(2, 3, 3, stride=1, pad=1, seed=13, bug=bug), bug="dx_padding_offset",
         input_shape=(2, 2, 5, 5), expected="x"),
    dict(name="conv_dW_stride_forgotten",
         description="conv2d stride=2: dW slices the input with step 1 instead of the stride",
         kind="layer",
         build=lambda bug: Conv2d(2, 3, 3, stride=2, pad=1, seed=14, bug=bug), bug="dW_stride_forgotten",
         input_shape=(2, 2, 7, 7), expected="W"),
    dict(name="maxpool_first_element",
         description="max pool 2x2/2: gradient routed to each window's first element, not argmax",
         kind="layer", build=lambda bug: MaxPool2d(2, 2, bug=bug), bug="first_element",
         make_inputs=_maxpool_inputs((2, 2, 4, 4), 15), expected="x"),
    dict(name="maxpool_overwrite_overlap",
         description="max pool 3x3/2 (overlapping): dx[window] = g instead of += g",
         kind="layer", build=lambda bug: MaxPool2d(3, 2, bug=bug), bug="overwrite_overlap",
         make_inputs=_maxpool_inputs((2, 2, 7, 7), 16), expected="x"),
    dict(name="gelu_tanh_approx_backward",
         description="GELU: exact (erf) forward, tanh-approximation derivative in backward "
                     "(~1e-3 relative mismatch)",
         kind="layer", build=lambda bug: GELU(bug=bug), bug="tanh_approx_backward",
         make_inputs=_gelu_inputs, expected="x"),
    dict(name="softplus_ignores_dy",
         description="softplus: backward returns sigmoid(x), the gradient for dy = 1",
         kind="layer", build=lambda bug: Softplus(bug=bug), bug="ignores_dy",
         input_shape=(3, 4), expected="x"),
    dict(name="tanh_stale_cache",
         description="tanh: output cached only on the first forward, backward uses a "
                     "previous batch's cache",
         kind="layer", build=_stale_tanh, bug="stale_cache",
         input_shape=(3, 5), expected="x"),
    dict(name="sigmoid_s_times_1_plus_s",
         description="sigmoid: derivative written s * (1 + s)",
         kind="layer", build=lambda bug: Sigmoid(bug=bug), bug="s_times_1_plus_s",
         input_shape=(3, 4), expected="x"),
    dict(name="leaky_relu_hardcoded_slope",
         description="leaky ReLU alpha=0.2: backward uses slope 0.01 on the negative side",
         kind="layer", build=lambda bug: LeakyReLU(0.2, bug=bug), bug="hardcoded_slope",
         input_shape=(3, 4), expected="x"),
    dict(name="lecun_tanh_float32_1pct",
         description="float32 1.7159 tanh(2x/3): backward uses 0.66 for 2/3 (1% off)",
         kind="layer", build=lambda bug: LeCunTanh(bug=bug), bug="constant_1pct",
         make_inputs=_normal((3, 4), 17, np.float32), expected="x", dtype="float32"),
    dict(name="huber_wrong_delta",
         description="Huber delta=0.5: backward clips at +-1 instead of +-delta",
         kind="layer", build=lambda bug: Huber(0.5, bug=bug), bug="wrong_delta",
         input_shape=(3, 4), expected="x"),
    dict(name="embedding_overwrite_repeats",
         description="embedding: dW[idx] += dy drops repeated-index contributions "
                     "(np.add.at needed)",
         kind="layer", build=lambda bug: Embedding(5, 3, seed=18, bug=bug), bug="overwrite_repeats",
         make_inputs=_embedding_inputs, expected="W"),
    dict(name="attention_dq_missing_scale",
         description="attention pair: dq lacks the 1/sqrt(d) factor (dk has it)",
         kind="pair", build=lambda bug: make_attention(bug), bug="dq_missing_scale",
         make_inputs=_normals((3, 4), (5, 4), (5, 2), seed=19), expected="q"),
    dict(name="mse_target_sign",
         description="MSE pair: gradient w.r.t. target has the sign of d/dpred",
         kind="pair", build=lambda bug: make_mse(bug), bug="target_sign",
         make_inputs=_normals((4, 3), (4, 3), seed=20), expected="target"),
    dict(name="ridge_l2_forgotten",
         description="ridge loss pair: L2 term lam*w missing from dw",
         kind="pair", build=lambda bug: make_ridge(0.1, bug), bug="l2_forgotten",
         make_inputs=_ridge_inputs, expected="w"),
    dict(name="cosine_db_copy_paste",
         description="cosine similarity pair: second input's gradient uses |a|^2 for |b|^2",
         kind="pair", build=lambda bug: make_cosine(bug), bug="db_copy_paste",
         make_inputs=_normals((3, 4), (3, 4), seed=22), expected="b"),
]


def _build_entries() -> tuple[tuple[Entry, ...], tuple[Entry, ...]]:
    bugs, twins = [], []
    for s in _SPECS:
        build, flag = s["build"], s["bug"]
        common = dict(kind=s["kind"], input_shape=s.get("input_shape"),
                      make_inputs=s.get("make_inputs"), dtype=s.get("dtype", "float64"))
        twin_name = s["name"] + "__twin"
        bugs.append(Entry(name=s["name"], description=s["description"],
                          factory=(lambda b=build, f=flag: b(f)), is_bug=True, twin=twin_name,
                          expected_input=s["expected"], expected_index=s.get("index"), **common))
        twins.append(Entry(name=twin_name, description="correct twin of: " + s["description"],
                           factory=(lambda b=build: b(None)), is_bug=False, twin=s["name"],
                           **common))
    return tuple(bugs), tuple(twins)


BUGS, TWINS = _build_entries()
ENTRIES: tuple[Entry, ...] = BUGS + TWINS
_BY_NAME = {e.name: e for e in ENTRIES}


def by_name(name: str) -> Entry:
    """Return the entry called ``name`` (KeyError if there is none)."""
    return _BY_NAME[name]


def twin_of(entry: Entry) -> Entry:
    """Return the counterpart of ``entry`` (bug -> twin, twin -> bug)."""
    return _BY_NAME[entry.twin]
