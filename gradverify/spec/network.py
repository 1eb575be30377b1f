"""Networks: a list of layer specs, an input shape, an optional loss and a seed.

A :class:`Network` says *what* to compute; the backends say *how*
(:mod:`gradverify.backends`: the reference engine composes each layer from
primitives, PyTorch and JAX use their own kernels where they have one). Each
layer record knows its output shape and its parameters' shapes, so a network
whose shapes do not fit is refused when it is built, with a message naming
the layer.

Semantics, shared by every backend (``x`` is the layer input):

* :class:`Dense` -- ``x @ W + b`` over the last axis; ``W`` is (in, units).
* :class:`Conv1d` -- cross-correlation of (N, C, L) with ``W`` (O, C, k), plus ``b``.
* :class:`Conv2d` -- cross-correlation of (N, C, H, W) with ``W`` (O, C, kh, kw), plus ``b``.
* :class:`MaxPool` / :class:`AvgPool` -- over windows of the last axis of a
  3-D input or the last two of a 4-D input; no padding; stride = kernel by default.
* :class:`Activation` -- a unary elementwise primitive of :mod:`gradverify.ops`.
* :class:`Flatten` -- (N, ...) -> (N, prod(...)).
* :class:`RNN` -- vanilla RNN over (N, T, D): ``h_t = tanh(x_t Wx + h_{t-1} Wh + b)``,
  ``h_0 = 0``; the last state (N, H), or every state (N, T, H).
* :class:`LayerNorm` -- standardise the last axis (biased variance, ``eps``
  inside the square root), then ``* gamma + beta``.
* :class:`BatchNorm` -- training mode: standardise each channel (axis 1;
  the last axis of a 2-D input) over the batch and spatial axes, then
  ``* gamma + beta``.
* :class:`Attention` -- multi-head scaled dot-product self-attention over
  (N, T, D): ``softmax(q k^T / sqrt(D / heads)) v`` per head with
  ``q, k, v = x Wq, x Wk, x Wv``, heads concatenated, then ``@ Wo``;
  ``causal`` masks future keys.
* :class:`Residual` -- ``x + f(x)`` for a shape-preserving list of layers.
* :class:`MSELoss` -- ``mean((y - target)^2)``, target drawn from the seed.
* :class:`CrossEntropyLoss` -- ``mean(-log_softmax(y)[n, labels[n]])`` over
  (N, K) logits, labels drawn from the seed.

Parameters are named ``"<layer index>.<name>"`` (``"0.W"``, ``"3.1.gamma"``
inside a residual block); the input is ``"x"``. Cost of every method: O(number
of layers), plus the array sizes for :meth:`Network.arrays`.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, ClassVar

import numpy as np

from ..errors import SpecError
from ..ops import PRIMITIVES
from ._base import SpecRecord, as_float, as_int, as_pair, as_shape, freeze, pair, register, setattr_frozen

__all__ = [
    "Layer", "Dense", "Conv1d", "Conv2d", "MaxPool", "AvgPool", "Activation", "Flatten", "RNN",
    "LayerNorm", "BatchNorm", "Attention", "Residual", "Loss", "MSELoss", "CrossEntropyLoss",
    "Network", "ParamInfo", "activation_names",
]


@dataclasses.dataclass(frozen=True)
class ParamInfo:
    """A parameter's name, shape and initial distribution ``mean + std * N(0, 1)``."""

    name: str
    shape: tuple[int, ...]
    std: float
    mean: float = 0.0


def activation_names() -> tuple[str, ...]:
    """The primitives usable as :class:`Activation`: public, unary, elementwise, no domain limit."""
    return tuple(n for n, p in PRIMITIVES.items()
                 if p.public and p.arity == 1 and p.kind == "elementwise" and not p.domain)


class Layer(SpecRecord):
    """Base class of layer specs: shape inference and parameter shapes."""

    kind: ClassVar[str] = "layer"

    def out_shape(self, shape: tuple[int, ...]) -> tuple[int, ...]:  # pragma: no cover - abstract
        """The output shape for an input of ``shape``; SpecError if the input does not fit."""
        raise NotImplementedError

    def params(self, shape: tuple[int, ...]) -> tuple[ParamInfo, ...]:
        """The parameters for an input of ``shape`` (none by default)."""
        return ()

    def _need(self, shape: tuple[int, ...], ndims: tuple[int, ...], layout: str) -> None:
        if len(shape) not in ndims:
            raise SpecError(f"{self!r} expects a {' or '.join(f'{d}-D' for d in ndims)} input {layout}, "
                            f"got shape {shape}")


def _out_len(n: int, k: int, s: int, p: int, what: str) -> int:
    out = (n + 2 * p - k) // s + 1
    if n + 2 * p < k:
        raise SpecError(f"{what}: window {k} is larger than the (padded) input length {n + 2 * p}")
    return out


@register
@dataclasses.dataclass(frozen=True, repr=False)
class Dense(Layer):
    """Fully connected: ``x @ W + b`` over the last axis."""

    units: int
    bias: bool = True
    kind: ClassVar[str] = "dense"

    def __post_init__(self):
        setattr_frozen(self, "units", as_int(self.units, "Dense units", minimum=1))
        setattr_frozen(self, "bias", bool(self.bias))

    def out_shape(self, shape):
        self._need(shape, (1, 2, 3, 4), "(..., features)")
        return shape[:-1] + (self.units,)

    def params(self, shape):
        d = shape[-1]
        ps = (ParamInfo("W", (d, self.units), 1 / math.sqrt(d)),)
        return ps + ((ParamInfo("b", (self.units,), 0.5),) if self.bias else ())


@register
@dataclasses.dataclass(frozen=True, repr=False)
class Conv1d(Layer):
    """1-D cross-correlation of (N, C, L) input with ``W`` (channels, C, kernel), plus ``b``."""

    channels: int
    kernel: int
    stride: int = 1
    padding: int = 0
    bias: bool = True
    kind: ClassVar[str] = "conv1d"

    def __post_init__(self):
        setattr_frozen(self, "channels", as_int(self.channels, "Conv1d channels", minimum=1))
        setattr_frozen(self, "kernel", as_int(self.kernel, "Conv1d kernel", minimum=1))
        setattr_frozen(self, "stride", as_int(self.stride, "Conv1d stride", minimum=1))
        setattr_frozen(self, "padding", as_int(self.padding, "Conv1d padding", minimum=0))
        setattr_frozen(self, "bias", bool(self.bias))

    def out_shape(self, shape):
        self._need(shape, (3,), "(N, C, L)")
        n, _, length = shape
        return (n, self.channels, _out_len(length, self.kernel, self.stride, self.padding, repr(self)))

    def params(self, shape):
        c = shape[1]
        ps = (ParamInfo("W", (self.channels, c, self.kernel), 1 / math.sqrt(c * self.kernel)),)
        return ps + ((ParamInfo("b", (self.channels,), 0.5),) if self.bias else ())


@register
@dataclasses.dataclass(frozen=True, repr=False)
class Conv2d(Layer):
    """2-D cross-correlation of (N, C, H, W) input with ``W`` (channels, C, kh, kw), plus ``b``."""

    channels: int
    kernel: Any
    stride: Any = 1
    padding: Any = 0
    bias: bool = True
    kind: ClassVar[str] = "conv2d"

    def __post_init__(self):
        setattr_frozen(self, "channels", as_int(self.channels, "Conv2d channels", minimum=1))
        setattr_frozen(self, "kernel", as_pair(freeze(self.kernel), "Conv2d kernel", minimum=1))
        setattr_frozen(self, "stride", as_pair(freeze(self.stride), "Conv2d stride", minimum=1))
        setattr_frozen(self, "padding", as_pair(freeze(self.padding), "Conv2d padding", minimum=0))
        setattr_frozen(self, "bias", bool(self.bias))

    def out_shape(self, shape):
        self._need(shape, (4,), "(N, C, H, W)")
        (kh, kw), (sh, sw), (ph, pw) = pair(self.kernel), pair(self.stride), pair(self.padding)
        n, _, h, w = shape
        return (n, self.channels, _out_len(h, kh, sh, ph, repr(self)), _out_len(w, kw, sw, pw, repr(self)))

    def params(self, shape):
        c = shape[1]
        kh, kw = pair(self.kernel)
        ps = (ParamInfo("W", (self.channels, c, kh, kw), 1 / math.sqrt(c * kh * kw)),)
        return ps + ((ParamInfo("b", (self.channels,), 0.5),) if self.bias else ())


class _Pool(Layer):
    kernel: Any
    stride: Any

    def __post_init__(self):
        name = type(self).__name__
        setattr_frozen(self, "kernel", as_pair(freeze(self.kernel), f"{name} kernel", minimum=1))
        if self.stride is not None:
            setattr_frozen(self, "stride", as_pair(freeze(self.stride), f"{name} stride", minimum=1))

    def windows(self, ndim: int) -> tuple[tuple[int, ...], tuple[int, ...]]:
        """(kernel, stride) per pooled axis for an input of ``ndim`` dims."""
        stride = self.kernel if self.stride is None else self.stride
        if ndim == 3:
            if not isinstance(self.kernel, int) or not isinstance(stride, int):
                raise SpecError(f"{self!r} on a 3-D input pools one axis: kernel and stride must be ints")
            return (self.kernel,), (stride,)
        return pair(self.kernel), pair(stride)

    def out_shape(self, shape):
        self._need(shape, (3, 4), "(N, C, L) or (N, C, H, W)")
        ks, ss = self.windows(len(shape))
        spatial = shape[2:]
        return shape[:2] + tuple(_out_len(n, k, s, 0, repr(self)) for n, k, s in zip(spatial, ks, ss))


@register
@dataclasses.dataclass(frozen=True, repr=False)
class MaxPool(_Pool):
    """Max over windows of the last axis (3-D input) or the last two axes (4-D input)."""

    kernel: Any
    stride: Any = None
    kind: ClassVar[str] = "max_pool"


@register
@dataclasses.dataclass(frozen=True, repr=False)
class AvgPool(_Pool):
    """Mean over windows of the last axis (3-D input) or the last two axes (4-D input)."""

    kernel: Any
    stride: Any = None
    kind: ClassVar[str] = "avg_pool"


@register
@dataclasses.dataclass(frozen=True, repr=False)
class Activation(Layer):
    """An elementwise nonlinearity, one of :func:`activation_names` (``"relu"``, ``"tanh"``...)."""

    fn: str
    kind: ClassVar[str] = "activation"

    def __post_init__(self):
        if self.fn not in activation_names():
            raise SpecError(f"Activation fn must be one of {list(activation_names())}, got {self.fn!r}")

    def out_shape(self, shape):
        return shape

    def __repr__(self) -> str:
        return f"Activation({self.fn!r})"


@register
@dataclasses.dataclass(frozen=True, repr=False)
class Flatten(Layer):
    """(N, ...) -> (N, prod(...))."""

    kind: ClassVar[str] = "flatten"

    def out_shape(self, shape):
        self._need(shape, (2, 3, 4, 5), "(N, ...)")
        return (shape[0], int(np.prod(shape[1:])))


@register
@dataclasses.dataclass(frozen=True, repr=False)
class RNN(Layer):
    """Vanilla tanh RNN over (N, T, D); returns the last state or every state."""

    hidden: int
    return_sequences: bool = False
    kind: ClassVar[str] = "rnn"

    def __post_init__(self):
        setattr_frozen(self, "hidden", as_int(self.hidden, "RNN hidden", minimum=1))
        setattr_frozen(self, "return_sequences", bool(self.return_sequences))

    def out_shape(self, shape):
        self._need(shape, (3,), "(N, T, D)")
        n, t, _ = shape
        return (n, t, self.hidden) if self.return_sequences else (n, self.hidden)

    def params(self, shape):
        d, h = shape[-1], self.hidden
        return (ParamInfo("Wx", (d, h), 1 / math.sqrt(d)), ParamInfo("Wh", (h, h), 1 / math.sqrt(h)),
                ParamInfo("b", (h,), 0.5))


@register
@dataclasses.dataclass(frozen=True, repr=False)
class LayerNorm(Layer):
    """Standardise the last axis, then scale by ``gamma`` and shift by ``beta`` (if ``affine``)."""

    eps: float = 1e-5
    affine: bool = True
    kind: ClassVar[str] = "layer_norm"

    def __post_init__(self):
        setattr_frozen(self, "eps", as_float(self.eps, "LayerNorm eps", positive=True))
        setattr_frozen(self, "affine", bool(self.affine))

    def out_shape(self, shape):
        self._need(shape, (2, 3, 4), "(..., features)")
        if shape[-1] < 2:
            raise SpecError(f"{self!r} needs at least 2 features to standardise, got shape {shape}")
        return shape

    def params(self, shape):
        d = shape[-1]
        return (ParamInfo("gamma", (d,), 0.2, 1.0), ParamInfo("beta", (d,), 0.5)) if self.affine else ()


@register
@dataclasses.dataclass(frozen=True, repr=False)
class BatchNorm(Layer):
    """Training-mode batch norm over axis 1 (channels; the features of a 2-D input)."""

    eps: float = 1e-5
    affine: bool = True
    kind: ClassVar[str] = "batch_norm"

    def __post_init__(self):
        setattr_frozen(self, "eps", as_float(self.eps, "BatchNorm eps", positive=True))
        setattr_frozen(self, "affine", bool(self.affine))

    def out_shape(self, shape):
        self._need(shape, (2, 3, 4), "(N, C, ...)")
        count = shape[0] * int(np.prod(shape[2:]))
        if count < 2:
            raise SpecError(f"{self!r} needs at least 2 values per channel (batch x spatial), got shape {shape}")
        return shape

    def params(self, shape):
        c = shape[1]
        return (ParamInfo("gamma", (c,), 0.2, 1.0), ParamInfo("beta", (c,), 0.5)) if self.affine else ()


@register
@dataclasses.dataclass(frozen=True, repr=False)
class Attention(Layer):
    """Multi-head scaled dot-product self-attention over (N, T, D) with Wq, Wk, Wv, Wo (D, D)."""

    heads: int = 1
    causal: bool = False
    kind: ClassVar[str] = "attention"

    def __post_init__(self):
        setattr_frozen(self, "heads", as_int(self.heads, "Attention heads", minimum=1))
        setattr_frozen(self, "causal", bool(self.causal))

    def out_shape(self, shape):
        self._need(shape, (3,), "(N, T, D)")
        if shape[-1] % self.heads:
            raise SpecError(f"{self!r}: feature size {shape[-1]} is not divisible by heads={self.heads}")
        return shape

    def params(self, shape):
        d = shape[-1]
        return tuple(ParamInfo(n, (d, d), 1 / math.sqrt(d)) for n in ("Wq", "Wk", "Wv", "Wo"))


@register
@dataclasses.dataclass(frozen=True, repr=False)
class Residual(Layer):
    """``x + f(x)``: the inner layers must keep the shape."""

    layers: tuple[Layer, ...]
    kind: ClassVar[str] = "residual"

    def __post_init__(self):
        layers = freeze(self.layers)
        if isinstance(layers, Layer):
            layers = (layers,)
        if not layers or not all(isinstance(l, Layer) for l in layers):
            raise SpecError("Residual needs a non-empty tuple of layer specs")
        setattr_frozen(self, "layers", layers)

    def shapes(self, shape):
        """Input shape of each inner layer, then the inner output shape."""
        out = [shape]
        for j, layer in enumerate(self.layers):
            try:
                out.append(layer.out_shape(out[-1]))
            except SpecError as exc:
                raise SpecError(f"inside Residual, layer {j}: {exc}") from None
        return out

    def out_shape(self, shape):
        inner = self.shapes(shape)[-1]
        if inner != shape:
            raise SpecError(f"Residual: the inner layers map {shape} to {inner}; x + f(x) needs the same shape")
        return shape

    def params(self, shape):
        shapes = self.shapes(shape)
        return tuple(dataclasses.replace(p, name=f"{j}.{p.name}")
                     for j, layer in enumerate(self.layers) for p in layer.params(shapes[j]))

    def __repr__(self) -> str:
        return f"Residual({self.layers!r})"


class Loss(SpecRecord):
    """Base class of losses: reduce the network output to a scalar against drawn constants."""

    kind: ClassVar[str] = "loss"

    def check_shape(self, shape: tuple[int, ...]) -> None:
        """SpecError if the loss cannot take an output of ``shape``."""

    def constants(self, shape: tuple[int, ...], rng: np.random.Generator) -> dict[str, np.ndarray]:
        """The loss's constants (targets, labels) for an output of ``shape``."""
        return {}


@register
@dataclasses.dataclass(frozen=True, repr=False)
class MSELoss(Loss):
    """``mean((y - target)^2)``; ``target`` is drawn from a standard normal."""

    kind: ClassVar[str] = "mse"

    def constants(self, shape, rng):
        return {"target": rng.standard_normal(shape)}


@register
@dataclasses.dataclass(frozen=True, repr=False)
class CrossEntropyLoss(Loss):
    """Mean negative log-likelihood of integer ``labels`` under ``softmax(y)``, y of shape (N, K)."""

    kind: ClassVar[str] = "cross_entropy"

    def check_shape(self, shape):
        if len(shape) != 2 or shape[1] < 2:
            raise SpecError(f"CrossEntropyLoss needs (N, K) logits with K >= 2, got shape {shape}; "
                            "add Flatten() and Dense(K) before it")

    def constants(self, shape, rng):
        return {"labels": rng.integers(0, shape[1], size=shape[0]).astype(np.int64)}


@register
@dataclasses.dataclass(frozen=True, repr=False)
class Network(SpecRecord):
    """A feed-forward network: layers applied in order to an input, then an optional loss.

    Attributes:
        layers: the layer specs.
        input_shape: shape of the input ``x`` (batch first).
        loss: ``None`` (the output is the last layer's array) or a :class:`Loss`.
        seed: draws the input, the parameters and the loss constants (three
            independent streams, so none shifts when another changes size).
    """

    layers: tuple[Layer, ...]
    input_shape: tuple[int, ...]
    loss: Loss | None = None
    seed: int = 0

    def __post_init__(self):
        layers = freeze(self.layers)
        if isinstance(layers, Layer):
            layers = (layers,)
        for i, layer in enumerate(layers):
            if not isinstance(layer, Layer):
                raise SpecError(f"layer {i} must be a layer spec (Dense, Conv2d...), got {type(layer).__name__}")
        setattr_frozen(self, "layers", layers)
        setattr_frozen(self, "input_shape", as_shape(self.input_shape, "input_shape"))
        setattr_frozen(self, "seed", as_int(self.seed, "seed", minimum=0))
        if self.loss is not None and not isinstance(self.loss, Loss):
            raise SpecError(f"loss must be None or a Loss (MSELoss(), CrossEntropyLoss()), got {self.loss!r}")
        shapes = self.shapes()
        if self.loss is not None:
            self.loss.check_shape(shapes[-1])

    def shapes(self) -> list[tuple[int, ...]]:
        """The input shape, then each layer's output shape; SpecError naming the layer that does not fit."""
        out = [self.input_shape]
        for i, layer in enumerate(self.layers):
            try:
                out.append(layer.out_shape(out[-1]))
            except SpecError as exc:
                raise SpecError(f"layer {i}: {exc}") from None
        return out

    @property
    def output_shape(self) -> tuple[int, ...]:
        """Shape of the network's result: ``()`` with a loss."""
        return () if self.loss is not None else self.shapes()[-1]

    def parameters(self) -> tuple[ParamInfo, ...]:
        """Every parameter, named ``"<layer>.<name>"``, in layer order."""
        shapes = self.shapes()
        return tuple(dataclasses.replace(p, name=f"{i}.{p.name}")
                     for i, layer in enumerate(self.layers) for p in layer.params(shapes[i]))

    def _streams(self) -> list[np.random.Generator]:
        return [np.random.default_rng(s) for s in np.random.SeedSequence(self.seed).spawn(3)]

    def arrays(self, dtype: Any = np.float64) -> dict[str, np.ndarray]:
        """The differentiated arrays: ``"x"`` then every parameter, drawn from ``seed``, in ``dtype``."""
        rx, rp, _ = self._streams()
        out = {"x": rx.standard_normal(self.input_shape).astype(dtype)}
        for p in self.parameters():
            out[p.name] = (p.mean + p.std * rp.standard_normal(p.shape)).astype(dtype)
        return out

    def constants(self) -> dict[str, np.ndarray]:
        """The loss's constants (``"target"`` float64, ``"labels"`` int64); empty without a loss."""
        if self.loss is None:
            return {}
        return self.loss.constants(self.shapes()[-1], self._streams()[2])

    @property
    def size(self) -> int:
        """Number of layers, residual blocks counted with their contents."""
        return sum(1 + (len(l.layers) if isinstance(l, Residual) else 0) for l in self.layers)

    def __repr__(self) -> str:
        parts = [repr(self.layers), f"input_shape={self.input_shape!r}"]
        if self.loss is not None:
            parts.append(f"loss={self.loss!r}")
        if self.seed:
            parts.append(f"seed={self.seed}")
        return f"Network({', '.join(parts)})"
