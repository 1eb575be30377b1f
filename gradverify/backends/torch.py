"""The PyTorch backend: ``torch`` kernels, ``torch.autograd`` VJPs, ``torch.func.jvp`` JVPs.

``torch`` is imported when the backend is constructed, never when this module
is imported. Layers use PyTorch's own kernels where it has one --
``F.linear``, ``F.conv1d``/``F.conv2d``, ``F.max_pool*``/``F.avg_pool*``,
``F.layer_norm``, ``F.batch_norm`` (training mode), ``F.scaled_dot_product_attention``,
``torch.nn.RNN`` (through ``torch.func.functional_call``), ``F.mse_loss`` and
``F.cross_entropy`` -- so the comparison with the reference engine pits two
independent implementations against each other.

Notes:

* Forward-mode AD is not implemented for the fused CPU attention kernel, so
  JVPs run with ``sdpa_kernel(SDPBackend.MATH)`` (PyTorch's own composite
  attention); VJPs and values use the default kernel.
* PyTorch slicing has no negative steps; such an :class:`~gradverify.spec.Index`
  raises SpecError here.
* Devices: ``"cpu"``, or ``"cuda"``/``"cuda:N"`` when ``torch.cuda.is_available()``.
"""

from __future__ import annotations

import contextlib
from typing import Any

import numpy as np

from .. import ops
from ..errors import BackendUnavailable, SpecError
from .base import Backend, Lowering

__all__ = ["TorchBackend", "TorchLowering"]


class TorchLowering(Lowering):
    """Torch primitives and native layers for one dtype and device."""

    def __init__(self, dtype: np.dtype, device: Any):
        super().__init__(dtype)
        import torch
        import torch.nn.functional as F

        self.torch, self.F = torch, F
        self.tdtype = torch.float64 if self.dtype == np.float64 else torch.float32
        self.tdevice = device
        self._rnns: dict = {}
        t = torch

        def reduce(fn):
            def run(x, axis, keepdims):
                return fn(x, dim=axis, keepdim=keepdims) if axis else x     # dim=() would reduce everything
            return run

        def softmax(fn_one, x, axis):
            if len(axis) == 1:
                return fn_one(x, axis[0])
            if not axis:
                return x
            s = x - t.logsumexp(x, dim=axis, keepdim=True)
            return s if fn_one is t.log_softmax else t.exp(s)

        def expand_dims(x, axis):
            for a in axis:
                x = x.unsqueeze(a)
            return x

        prims = {
            "add": t.add, "sub": t.sub, "mul": t.mul, "div": t.div, "pow": t.pow,
            "maximum": t.maximum, "minimum": t.minimum, "where": t.where,
            "neg": t.neg, "square": t.square, "exp": t.exp, "log": t.log, "sqrt": t.sqrt, "abs": t.abs,
            "sin": t.sin, "cos": t.cos, "tanh": t.tanh, "sigmoid": t.sigmoid, "relu": t.relu,
            "softplus": F.softplus,
            "sum": reduce(t.sum), "mean": reduce(t.mean), "max": reduce(t.amax),
            "logsumexp": reduce(t.logsumexp),
            "softmax": lambda x, axis: softmax(t.softmax, x, axis),
            "log_softmax": lambda x, axis: softmax(t.log_softmax, x, axis),
            "reshape": lambda x, shape: t.reshape(x, shape),
            "transpose": lambda x, axes: x.permute(axes),
            "broadcast_to": lambda x, shape: t.broadcast_to(x, shape),
            "expand_dims": expand_dims,
            "squeeze": lambda x, axis: t.squeeze(x, dim=axis) if axis else x,
            "getitem": lambda x, index: x[index],
            "concatenate": lambda *xs, axis: t.cat(xs, dim=axis),
            "stack": lambda *xs, axis: t.stack(xs, dim=axis),
            "matmul": t.matmul,
            "conv2d": lambda x, w, stride, padding: F.conv2d(x, w, stride=stride, padding=padding),
            "max_pool2d": lambda x, kernel, stride: F.max_pool2d(x, kernel, stride),
            "avg_pool2d": lambda x, kernel, stride: F.avg_pool2d(x, kernel, stride),
        }
        missing = set(ops.public_primitives()) - set(prims)
        assert not missing, f"torch lowering lacks {sorted(missing)}"
        self.prims = prims

    # -- constants --------------------------------------------------------------
    def const(self, value):
        return self.torch.tensor(value, dtype=self.tdtype, device=self.tdevice)

    def mask(self, array):
        return self.torch.as_tensor(np.asarray(array, dtype=bool), device=self.tdevice)

    def int_array(self, array):
        return self.torch.as_tensor(np.asarray(array, dtype=np.int64), device=self.tdevice)

    def constant(self, array):
        return self.torch.as_tensor(np.asarray(array, dtype=self.dtype), device=self.tdevice)

    def index(self, index):
        for it in index.items:
            if isinstance(it, tuple) and it[0] == "slice" and it[3] is not None and it[3] < 0:
                raise SpecError(f"PyTorch cannot slice with a negative step ({it}); use a 'take' index instead")
        return super().index(index)

    # -- native layers ----------------------------------------------------------
    def layer_dense(self, layer, x, p):
        return self.F.linear(x, p["W"].T, p["b"] if layer.bias else None)

    def layer_conv1d(self, layer, x, p):
        return self.F.conv1d(x, p["W"], p["b"] if layer.bias else None, stride=layer.stride, padding=layer.padding)

    def layer_conv2d(self, layer, x, p):
        return self.F.conv2d(x, p["W"], p["b"] if layer.bias else None, stride=layer.stride, padding=layer.padding)

    def _native_pool(self, kind, layer, x):
        ks, ss = layer.windows(x.dim())
        fn = getattr(self.F, f"{kind}_pool{len(ks)}d")
        return fn(x, ks, ss)

    def layer_max_pool(self, layer, x, p):
        return self._native_pool("max", layer, x)

    def layer_avg_pool(self, layer, x, p):
        return self._native_pool("avg", layer, x)

    def layer_layer_norm(self, layer, x, p):
        g, b = (p["gamma"], p["beta"]) if layer.affine else (None, None)
        return self.F.layer_norm(x, (x.shape[-1],), g, b, layer.eps)

    def layer_batch_norm(self, layer, x, p):
        g, b = (p["gamma"], p["beta"]) if layer.affine else (None, None)
        return self.F.batch_norm(x, None, None, g, b, training=True, momentum=0.0, eps=layer.eps)

    def attention_core(self, q, k, v, causal):
        return self.F.scaled_dot_product_attention(q, k, v, is_causal=causal)

    def layer_rnn(self, layer, x, p):
        torch = self.torch
        key = (x.shape[-1], layer.hidden)
        if key not in self._rnns:
            with torch.random.fork_rng(devices=[]):     # module init must not move the global RNG
                self._rnns[key] = torch.nn.RNN(key[0], key[1], batch_first=True, device="meta")
        rnn = self._rnns[key]
        params = {"weight_ih_l0": p["Wx"].T, "weight_hh_l0": p["Wh"].T, "bias_ih_l0": p["b"],
                  "bias_hh_l0": torch.zeros_like(p["b"])}
        out, h = torch.func.functional_call(rnn, params, (x,))
        return out if layer.return_sequences else h[0]

    def loss_mse(self, loss, y, constants):
        return self.F.mse_loss(y, self.constant(constants["target"]))

    def loss_cross_entropy(self, loss, y, constants):
        return self.F.cross_entropy(y, self.int_array(constants["labels"]))


class TorchBackend(Backend):
    """PyTorch: values and gradients from ``torch`` and ``torch.autograd``."""

    name = "torch"
    extra = "torch"
    modules = ("torch",)

    def _import(self):
        import torch

        self.torch = torch

    def _device(self, device):
        torch = self.torch
        if device.startswith("cuda") and not torch.cuda.is_available():
            raise BackendUnavailable(f"device {device!r} requested but torch.cuda.is_available() is False")
        try:
            return str(torch.device(device))
        except RuntimeError as exc:
            raise SpecError(f"unknown torch device {device!r}: {exc}") from None

    def _make_lowering(self, dtype):
        return TorchLowering(dtype, self.torch.device(self.device))

    def _to(self, array):
        return self.torch.as_tensor(np.array(array, copy=True), device=self.device)

    def _from(self, value):
        return value.detach().cpu().numpy().copy()

    def _vjp(self, f, primals):
        torch = self.torch
        leaves = [p.requires_grad_(True) if p.is_floating_point() else p for p in primals]
        with torch.enable_grad():
            out = f(*leaves)

        def pullback(ct):
            wrt = [l for l in leaves if l.requires_grad]
            if not out.requires_grad:
                return [None] * len(leaves)
            gs = iter(torch.autograd.grad(out, wrt, grad_outputs=ct, allow_unused=True))
            return [next(gs) if l.requires_grad else None for l in leaves]

        return out, pullback

    def _jvp(self, f, primals, tangents):
        import warnings

        from torch.nn.attention import SDPBackend, sdpa_kernel

        with sdpa_kernel([SDPBackend.MATH]), warnings.catch_warnings():
            # torch.func's first use scripts a helper and warns that torch.jit.script is deprecated.
            warnings.filterwarnings("ignore", message=r"`torch.jit.script` is deprecated", category=DeprecationWarning)
            return self.torch.func.jvp(f, tuple(primals), tuple(tangents))

    def _scope(self):
        return contextlib.nullcontext()
