"""PyTorch adapters: torch callables (``autograd.Function.apply`` included) and ``torch.nn.Module``.

Imported only when an input, a function or a layer already comes from torch
(see :mod:`gradverify.frameworks`), so ``import gradverify`` never imports
torch.

* :class:`TorchFunctionTarget` -- the analytic gradient of ``<u, fn(*xs)>``
  is ``torch.autograd.grad(outputs, inputs, grad_outputs=u)`` in the
  caller's dtype (for an ``autograd.Function`` that runs its hand-written
  ``backward``), or the caller's ``vjp=``; the finite differences evaluate
  ``fn`` on float64 tensors.
* :class:`TorchModuleTarget` -- the input gradient and every parameter
  gradient (named as in ``named_parameters()``) of a module as given; the
  finite differences perturb the parameters of a float64 deep copy in place
  through numpy views of their storage (on CPU; on another device the
  point is copied there before each evaluation). The caller's module is
  never perturbed, and its buffers (batch-norm running statistics...) are
  restored after the analytic pass.

Randomness: torch's random state is captured when the target is built and
restored before every evaluation and before the analytic pass (inside
``torch.random.fork_rng``: the caller's own generator state is left as it
was), so dropout draws the same mask everywhere and is checked as the fixed
linear map it is. Random draws depend on the dtype (a float64 dropout mask
is not the float32 one), so when the code draws random numbers and the
caller's dtype is not float64, the finite differences run in the caller's
dtype (with a warning: the verdict is coarser).

What gradcheck checks, this checks too (each at its cause, in the adapter):

* complex tensors are held as their real view (``[..., 0]`` real part,
  ``[..., 1]`` imaginary part), each part differentiated on its own, and a
  complex output gets a complex cotangent (:func:`_cotangent`: torch's
  conjugate Wirtinger convention is exactly that real view);
* sparse inputs (COO, CSR, CSC, BSR, BSC) are read densified and rebuilt
  in their layout and pattern for every call (:func:`_like_layout`); their
  gradient is compared on the pattern (``gradcheck(masked=True)``);
* an input that is a view with a storage offset keeps that storage
  (:class:`_Storage`), so code that addresses it (``as_strided``) reads
  the same elements;
* where the caller marks some tensors ``requires_grad=True``, the unmarked
  ones are constants; outputs autograd does not differentiate (batch
  statistics beside a normalisation) are left out of the function checked;
* a ZeroTensor gradient reads as zeros.

Devices: inputs and modules stay on their device (CUDA included); each
evaluation copies the float64 point there (on the CPU, parameters are
perturbed through numpy views and nothing is copied). bfloat16 is refused
(numpy cannot hold it).
"""

from __future__ import annotations

import contextlib
import copy
import functools
import weakref
from typing import Any, Callable, Mapping

import numpy as np
import torch

from ..errors import NoDifferentiableInputs, ProtocolError, ShapeMismatch, SpecError
from ..layers import Target, _signature_names, _to_array, call_user, draw_input, validate_gradients
from ._common import (
    BatchedEvaluation, FrameworkFunctionTarget, NestedPrimal, _name, dtype_dependence, flatten_tree, join_outputs,
    split_cotangent, split_inputs,
)

__all__ = ["TorchFunctionTarget", "TorchModuleTarget", "is_tensor", "names_source"]


def is_tensor(value: Any) -> bool:
    return isinstance(value, torch.Tensor)


def _float_tensor(value: Any) -> bool:
    """A floating-point or complex tensor: something to differentiate (complex as its real and imaginary parts)."""
    return isinstance(value, torch.Tensor) and (value.is_floating_point() or value.is_complex())


def _real_shape(t: torch.Tensor) -> tuple:
    """The shape of ``t`` as gradverify holds it: a complex tensor's real view has a trailing axis of 2."""
    return tuple(t.shape) + ((2,) if t.is_complex() else ())


def _as_complex(t: torch.Tensor) -> torch.Tensor:
    """``torch.view_as_complex`` of a real view (an empty one, whose strides numpy leaves arbitrary, rebuilt)."""
    if t.numel() == 0:
        return torch.zeros(t.shape[:-1], dtype=torch.complex128 if t.dtype == torch.float64 else torch.complex64,
                           device=t.device)
    return torch.view_as_complex(t)


def _dense(t: torch.Tensor) -> torch.Tensor:
    """A strided tensor with the values of ``t`` (a sparse COO/CSR/CSC/BSR/BSC tensor densified)."""
    return t.to_dense() if t.layout != torch.strided else t


def tensor_to_numpy(t: torch.Tensor, name: str, *, complex_ok: bool = False) -> np.ndarray:
    """A numpy copy of ``t`` in its own dtype (detached, densified, on the CPU).

    A complex tensor (where ``complex_ok``) becomes its real view: the real
    dtype, shape ``t.shape + (2,)``, real part at ``[..., 0]`` and
    imaginary part at ``[..., 1]`` -- each differentiated on its own.
    """
    if t.dtype == torch.bfloat16:
        raise SpecError(f"input {name!r} is a bfloat16 tensor, which numpy cannot hold; check it in float32 "
                        "(x.float()) -- the comparison is then against float32 tolerances")
    if t.is_complex() and not complex_ok:
        raise SpecError(f"input {name!r} is complex; a module's inputs and parameters must be real (complex "
                        "tensors are checked for torch functions: gradverify.check)")
    return _leaf_numpy(t)


def _leaf_numpy(t: torch.Tensor) -> np.ndarray:
    """A numpy copy of a tensor: a ZeroTensor as zeros, a sparse tensor densified, a complex one as its real view."""
    t = t.detach()
    if t._is_zerotensor():
        # a ZeroTensor (torch._efficientzerotensor: autograd's "gradient known to be zero") has no storage
        t = torch.zeros(t.shape, dtype=t.dtype, device=t.device)
    t = _dense(t)
    if t.dtype == torch.bfloat16:
        t = t.float()
    t = t.resolve_conj().resolve_neg()
    if t.is_complex():
        t = torch.view_as_real(t)
    return np.array(t.cpu().numpy(), copy=True)


def names_source(fn: Callable) -> Callable:
    """The callable whose signature names ``fn``'s inputs.

    ``Function.apply`` takes ``*args``: its inputs are named after
    ``forward`` (without ``ctx`` unless the class defines
    ``setup_context``); a module's after its ``forward``.
    """
    owner = getattr(fn, "__self__", None)
    if isinstance(owner, type) and issubclass(owner, torch.autograd.Function):
        fwd = owner.forward
        if getattr(owner, "setup_context", None) is not getattr(torch.autograd.Function, "setup_context", None):
            return fwd
        return functools.partial(fwd, None)
    if isinstance(fn, torch.nn.Module):
        return fn.forward
    return fn


def _ones_like_sparse(like: torch.Tensor) -> torch.Tensor:
    """``like`` (a sparse tensor) with every specified value set to one: its sparsity pattern, in its layout."""
    like = like.detach()
    if like.layout == torch.sparse_coo:
        like = like.coalesce()
        return torch.sparse_coo_tensor(like.indices(), torch.ones_like(like.values()), like.shape).coalesce()
    if like.layout in (torch.sparse_csr, torch.sparse_bsr):
        c, p = like.crow_indices(), like.col_indices()
    else:
        c, p = like.ccol_indices(), like.row_indices()
    return torch.sparse_compressed_tensor(c, p, torch.ones_like(like.values()), like.shape, layout=like.layout)


def sparse_pattern(like: torch.Tensor) -> np.ndarray:
    """The specified elements of a sparse tensor, as a dense boolean numpy array."""
    return _ones_like_sparse(like).to_dense().cpu().numpy() != 0


def _like_layout(t: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """The dense ``t`` in the sparse layout and pattern of ``like`` (the code under test gets the layout it was given).

    Values at ``like``'s specified elements are taken from ``t``; an
    unspecified element (zero in the caller's tensor) is no element of the
    input, and a perturbation there is not representable: finite
    differences see no dependence on it, and the gradient under test is
    read on the pattern only (see :meth:`TorchFunctionTarget.autodiff`),
    as ``torch.autograd.gradcheck(masked=True)`` reads it.
    """
    mask = _ones_like_sparse(like).to(device=t.device)
    return t.sparse_mask(mask if mask.layout != torch.sparse_coo else mask.to(t.dtype))


class _Storage:
    """The storage behind an input that is a view with an offset, so every call gets the same view of it.

    Copying such an input into fresh storage would move it to offset 0,
    and code that addresses the storage (``torch.as_strided(x, size,
    stride, storage_offset)``) would read other elements or out of bounds.
    Each call gets a fresh copy of the whole storage (elements outside the
    view keep the caller's values: constants) with the input's values
    written into a view of the caller's size, strides and offset.
    """

    def __init__(self, t: torch.Tensor):
        t = t.detach()
        self.size, self.stride, self.offset = tuple(t.shape), tuple(t.stride()), t.storage_offset()
        numel = t.untyped_storage().nbytes() // t.element_size()
        self.storage = torch.as_strided(t, (numel,), (1,), 0).clone()  # the whole storage, values as given

    def view_of(self, t: torch.Tensor) -> torch.Tensor:
        """``t``'s values in a view of a fresh copy of the storage (``t``'s dtype and device)."""
        buf = self.storage.to(device=t.device, dtype=t.dtype, copy=True)
        view = buf.as_strided(self.size, self.stride, self.offset)
        view.copy_(t)
        return view

    def clone_of(self, leaf: torch.Tensor) -> torch.Tensor:
        """A differentiable clone of ``leaf`` (a view of such a storage) in the same geometry."""
        numel = leaf.untyped_storage().nbytes() // leaf.element_size()
        return torch.as_strided(leaf, (numel,), (1,), 0).clone().as_strided(self.size, self.stride, self.offset)


class RngPin:
    """torch's random state, captured once and restored around every run.

    Runs happen inside ``torch.random.fork_rng`` (on the CPU alone, its
    equivalent on the default generator: the fixed cost of every
    evaluation, a third of it for small code), so the caller's generator
    state is untouched. ``used`` says whether any run drew random numbers.
    """

    def __init__(self, devices: list):
        self.devices = sorted({d.index if d.index is not None else torch.cuda.current_device()
                               for d in devices if d.type == "cuda"})
        self.cpu = torch.get_rng_state()
        self.cuda = {d: torch.cuda.get_rng_state(d) for d in self.devices}
        self.used = False

    def __call__(self):
        return _CpuPin(self) if not self.devices else self._forked()

    @contextlib.contextmanager
    def _forked(self):
        with torch.random.fork_rng(devices=self.devices):
            torch.set_rng_state(self.cpu)
            for d, s in self.cuda.items():
                torch.cuda.set_rng_state(s, d)
            yield
            if not self.used:
                self.used = not torch.equal(torch.get_rng_state(), self.cpu) or any(
                    not torch.equal(torch.cuda.get_rng_state(d), s) for d, s in self.cuda.items()
                )


class _CpuPin:
    """``RngPin()`` without CUDA devices: the default generator's state saved, pinned, compared and put back."""

    __slots__ = ("pin", "saved")

    def __init__(self, pin: RngPin):
        self.pin = pin

    def __enter__(self):
        gen = torch.default_generator
        self.saved = gen.get_state()
        gen.set_state(self.pin.cpu)

    def __exit__(self, *exc):
        gen = torch.default_generator
        if not self.pin.used and exc[0] is None:
            self.pin.used = not torch.equal(gen.get_state(), self.pin.cpu)
        gen.set_state(self.saved)
        return False


def _to_tensor(value: Any, device) -> Any:
    if isinstance(value, np.ndarray):
        # Shares memory with the (copied) numpy argument, so an in-place write
        # by the code under test shows up in the mutation checks.
        t = torch.from_numpy(value) if value.flags.writeable else torch.from_numpy(value.copy())
        return t if device is None or device.type == "cpu" else t.to(device)
    return value


def _autograd(outputs, inputs, grad_outputs, what: str):
    """``torch.autograd.grad`` (unused inputs give None); a backward's wrong-shaped gradient is a ShapeMismatch.

    Anything else the backward raises (a user ``backward`` of an
    ``autograd.Function`` that fails) is a CodeUnderTestError naming ``what``.
    """
    __tracebackhide__ = True

    def grad():
        try:
            return torch.autograd.grad(outputs, inputs, grad_outputs=grad_outputs, allow_unused=True)
        except RuntimeError as exc:
            if "invalid gradient" in str(exc):
                raise ShapeMismatch(f"{what}: a backward returned a gradient of the wrong shape ({exc}); a gradient "
                                    "must have the shape of what it differentiates (sum over broadcast axes?)") from exc
            raise

    return call_user(what, "backward", lambda *_: grad(), tuple(grad_outputs),
                     names=[f"grad_output {i}" for i in range(len(grad_outputs))])


_RANDOM = "draws random numbers (dropout?) whose values depend on the dtype"


def _cotangent(piece: np.ndarray, out: torch.Tensor) -> torch.Tensor:
    """The cotangent piece as a tensor like ``out`` (a 0-d piece stays 0-d: ascontiguousarray makes it 1-d).

    For a complex output the piece is the real view of a complex cotangent
    ``u``: torch's ``grad_outputs=u`` differentiates the real loss
    ``sum(Re(u) Re(y) + Im(u) Im(y))``, whose gradient it returns as
    ``dL/dRe(x) + i dL/dIm(x)`` (the conjugate Wirtinger convention of
    ``torch.autograd.gradcheck``), i.e. exactly the real view that finite
    differences of the real and imaginary parts measure.
    """
    t = torch.from_numpy(np.ascontiguousarray(piece).reshape(np.shape(piece)))
    if out.is_complex():
        t = _as_complex(t.to(torch.float64 if out.dtype == torch.complex128 else torch.float32))
    return t.to(device=out.device, dtype=out.dtype)


#: Below this many elements to differentiate, a check runs torch on one
#: thread: each evaluation is small, and a thread pool's wake-ups cost more
#: than the work (18 ms against 2 us for a tiny linear on a loaded machine).
SINGLE_THREAD_BELOW = 1_000_000


@contextlib.contextmanager
def _torch_threads_for(size: int):
    before = torch.get_num_threads()
    if size < SINGLE_THREAD_BELOW and before != 1:
        torch.set_num_threads(1)
    try:
        yield
    finally:
        if torch.get_num_threads() != before:
            torch.set_num_threads(before)


def _perturbed_rows(base: torch.Tensor, idx: np.ndarray, vals: np.ndarray) -> torch.Tensor:
    """``len(idx)`` copies of ``base``, row ``b`` with flat element ``idx[b]`` set to ``vals[b]``."""
    rows = base.reshape(1, -1).repeat(len(idx), 1)
    rows[torch.arange(len(idx), device=base.device), torch.from_numpy(idx).to(base.device)] = \
        torch.from_numpy(np.ascontiguousarray(vals)).to(device=base.device, dtype=base.dtype)
    return rows.reshape((len(idx),) + tuple(base.shape))


def _joined(out: Any, kept: list[bool] | None = None) -> torch.Tensor:
    """The floating leaves of an output joined as :func:`join_outputs` does (inside ``vmap``).

    ``kept`` (one flag per floating leaf) leaves out the outputs autograd does not differentiate.
    """
    if _float_tensor(out):
        return torch.view_as_real(out) if out.is_complex() else out
    leaves = [v for v in flatten_tree(out, is_tensor) if _float_tensor(v)]
    if kept is not None and len(kept) == len(leaves):
        leaves = [v for v, k in zip(leaves, kept) if k]
    leaves = [torch.view_as_real(v) if v.is_complex() else v for v in leaves]
    if not leaves:
        raise ProtocolError(f"the code returned {type(out).__name__} with no floating-point tensor in it")
    return torch.cat([v.reshape(-1) for v in leaves])


def _vmap(fn: Callable, *rows: torch.Tensor) -> np.ndarray:
    """``torch.func.vmap(fn)(*rows)`` as numpy (every argument batched along its first axis).

    Random draws raise (``randomness="error"``), so code that draws (dropout)
    falls back to the loop, whose every call replays the pinned random state.
    """
    import warnings

    from torch.func import vmap

    with warnings.catch_warnings():
        # torch's notes on its own missing batching rules (the op then runs in a loop) are not the user's concern
        warnings.filterwarnings("ignore", message="There is a performance drop", category=UserWarning)
        warnings.filterwarnings("ignore", message="An output with one or more elements was resized",
                                category=UserWarning)
        return vmap(fn, randomness="error")(*rows).detach().cpu().numpy()


class _RecordingCtx:
    """A stand-in for the ``ctx`` of a ``torch.autograd.Function.forward`` run outside ``apply``.

    It records what the forward saves and ignores what only ``backward``
    would read, so the forward's own torch operations can be differentiated
    by autograd (the exact reference for the Function's ``backward``).
    """

    def __init__(self, args: tuple):
        self.needs_input_grad = tuple(isinstance(a, torch.Tensor) and a.requires_grad for a in args)
        self.saved_tensors: tuple = ()
        self.materialize_grads = True

    def save_for_backward(self, *tensors):
        self.saved_tensors = tensors

    def save_for_forward(self, *tensors):
        pass

    def mark_dirty(self, *tensors):
        pass

    def mark_non_differentiable(self, *tensors):
        pass

    def set_materialize_grads(self, value: bool):
        self.materialize_grads = value


class _FunctionPrimal:
    """``Function.forward`` as a plain differentiable callable (with a :class:`_RecordingCtx` where it takes one)."""

    def __init__(self, cls: type):
        self.cls = cls
        # New-style Functions (``setup_context`` defined) have a forward without ctx.
        self.takes_ctx = not any("setup_context" in vars(c) for c in cls.__mro__
                                 if c is not torch.autograd.Function and issubclass(c, torch.autograd.Function)
                                 and c.__module__.split(".")[0] != "torch")
        self.forward = cls.forward  # the class's own, also while primal_functions() patches it
        self.__name__ = f"{cls.__name__}.forward"

    def __call__(self, *args, **kwargs):
        if self.takes_ctx:
            return self.forward(_RecordingCtx(args), *args, **kwargs)
        return self.forward(*args, **kwargs)


def _user_functions() -> list[type]:
    """Every ``torch.autograd.Function`` subclass defined outside torch (user and third-party code)."""
    out, met, stack = [], set(), list(torch.autograd.Function.__subclasses__())
    while stack:
        cls = stack.pop()
        if cls in met:  # (a class with several Function bases is met once per base)
            continue
        met.add(cls)
        stack.extend(cls.__subclasses__())
        if cls.__module__.split(".")[0] != "torch":
            out.append(cls)
    return out


@contextlib.contextmanager
def primal_functions(seen: list):
    """Within the context, every user-defined ``torch.autograd.Function`` is differentiated through its forward.

    Each such class gets, for the duration (then restored), a ``forward``
    (or ``setup_context``) that keeps the Function's inputs on ``ctx``, and a
    ``backward`` that re-runs the original forward on them under autograd
    and returns autograd's VJP -- the exact reference for the hand-written
    ``backward``, whatever way the code reaches ``apply`` (a bound
    ``MyFunction.apply`` kept in a variable included). The classes whose
    backward ran are appended to ``seen``.

    Cost: two attributes set and restored per user Function class alive in
    the process; the replacements are made once per class (and again only
    where its ``forward``/``backward``, or a Function base's, changed since).
    """
    saved = []
    _SEEN.append(seen)
    try:
        # (every patch made or found before any is set: a class's patch is read off classes not yet patched)
        for cls, patch in [(cls, _patch_of(cls)) for cls in _user_functions()]:
            for attr, original, replacement in patch:
                saved.append((cls, attr, original))
                setattr(cls, attr, replacement)
        yield seen
    finally:
        _SEEN.pop()
        for cls, attr, value in reversed(saved):
            if value is _MISSING:
                if attr in cls.__dict__:
                    delattr(cls, attr)
            else:
                setattr(cls, attr, value)


#: The ``seen`` lists of the :func:`primal_functions` contexts open, innermost last (a patched backward notes
#: its class in the innermost one).
_SEEN: list[list] = []
#: cls -> (the methods it was made from, its patch: ((attribute, the class's own value or _MISSING, the
#: replacement), ...))
_PATCHES: "weakref.WeakKeyDictionary[type, tuple]" = weakref.WeakKeyDictionary()


def _methods_of(cls: type) -> list:
    """The methods a class's patch is made from: those it and its bases before ``torch.autograd.Function`` define."""
    out = []
    for c in cls.__mro__:
        if c is torch.autograd.Function:
            break
        d = c.__dict__
        out += (d.get("forward"), d.get("setup_context"), d.get("backward"), d.get("vjp"))
    return out


def _patch_of(cls: type) -> tuple:
    """What :func:`primal_functions` sets on ``cls``: made once, again where its methods (or a base's) changed."""
    methods = _methods_of(cls)
    known = _PATCHES.get(cls)
    if known is not None and len(known[0]) == len(methods) and all(a is b for a, b in zip(known[0], methods)):
        return known[1]
    primal = _FunctionPrimal(cls)
    stash = "forward" if primal.takes_ctx else "setup_context"
    # one of backward/vjp is the user's (torch refuses a class defining both)
    user = "vjp" if cls.vjp is not torch.autograd.Function.vjp else "backward"
    stashing = _stashing_forward(cls.forward) if primal.takes_ctx else _stashing_setup(cls.setup_context)
    patch = (
        (stash, cls.__dict__.get(stash, _MISSING), staticmethod(stashing)),
        (user, cls.__dict__.get(user, _MISSING), staticmethod(_exact_backward(primal))),
    )
    _PATCHES[cls] = (methods, patch)
    return patch


_MISSING = object()


def _stashing_forward(forward: Callable) -> Callable:
    def stash(ctx, *args, **kwargs):
        ctx._gradverify_inputs = (args, kwargs)
        return forward(ctx, *args, **kwargs)
    return stash


def _stashing_setup(setup: Callable) -> Callable:
    def stash(ctx, inputs, output):
        ctx._gradverify_inputs = (tuple(inputs), {})
        return setup(ctx, inputs, output)
    return stash


def _exact_backward(primal: "_FunctionPrimal") -> Callable:
    def backward(ctx, *grads):
        seen = _SEEN[-1] if _SEEN else []
        if primal.cls not in seen:
            seen.append(primal.cls)
        args, kwargs = ctx._gradverify_inputs
        leaves = [a.detach().requires_grad_(True) if _float_tensor(a) else a
                  for a in args]
        with torch.enable_grad():
            out = primal(*[a.clone() if isinstance(a, torch.Tensor) and a.requires_grad else a for a in leaves],
                         **kwargs)
        outs = out if isinstance(out, (tuple, list)) else (out,)
        pairs = [(o, g) for o, g in zip(outs, grads)
                 if isinstance(o, torch.Tensor) and o.requires_grad and g is not None]
        wrt = [a for a in leaves if isinstance(a, torch.Tensor) and a.requires_grad]
        got = iter(torch.autograd.grad([o for o, _ in pairs], wrt, [g for _, g in pairs], allow_unused=True)
                   if pairs and wrt else [None] * len(wrt))
        return tuple(next(got) if isinstance(a, torch.Tensor) and a.requires_grad else None for a in leaves)
    return backward


def _calls_custom_function(outs) -> bool:
    """Whether the autograd graph of ``outs`` holds a node of a user-defined ``torch.autograd.Function``.

    Cost: one walk over the graph's nodes (no tensor work).
    """
    stack = [o.grad_fn for o in outs if isinstance(o, torch.Tensor) and o.grad_fn is not None]
    seen: set[int] = set()
    while stack:
        node = stack.pop()
        if node is None or id(node) in seen:
            continue
        seen.add(id(node))
        cls = getattr(type(node), "_forward_cls", None)
        if cls is not None and cls.__module__.split(".")[0] != "torch":
            return True
        stack.extend(n for n, _ in node.next_functions)
    return False


class _Intercepting(NestedPrimal):
    """A torch callable whose reference runs in :meth:`scope`; ``intercepted`` lists the Functions it called.

    Not ``nested`` in the sense of the message a refutation gives: a custom
    Function's forward is the user's own code, so a disagreement there is
    worth a report.
    """

    nested = False

    def scope(self):
        """The context the forward *and* the backward of the reference run in (:func:`primal_functions`)."""
        return primal_functions(self._seen)


class TorchFunctionTarget(FrameworkFunctionTarget):
    """A torch callable (see the module docstring).

    Cost per evaluation: one call of ``fn`` on float64 tensors (plus a copy
    of each input); the analytic pass is one forward and one
    ``torch.autograd.grad`` in the caller's dtype. Full checks evaluate the
    perturbations of a tensor in batches (:class:`~gradverify.batching.BatchedEvaluation`)
    through ``torch.func.vmap``; where the code cannot be vmapped (an
    ``autograd.Function`` without ``setup_context``/``generate_vmap_rule``,
    ``.item()`` control flow), along the batch axis its forward accepts
    (:meth:`_batch_axis`); else a plain loop.
    """

    framework = "torch"
    #: vmap first; where it refuses the code, the batch axis the code accepts (see :mod:`gradverify.batching`)
    batch_strategies = ("vmap", "batch axis")

    def __init__(self, fn: Callable, inputs: Any, vjp: Callable | None, constants: Any = ()):
        self.devices: dict[str, Any] = {}
        self.requires_grad: dict[str, bool] = {}
        self.complex_inputs: set[str] = set()
        self.layouts: dict[str, torch.Tensor] = {}  # sparse inputs: name -> the caller's tensor (its layout)
        self.storages: dict[str, _Storage] = {}  # views with a storage offset: name -> their storage
        super().__init__(fn, inputs, vjp, names_from=names_source(fn), constants=constants)
        self.default_device = next(iter(self.devices.values()), torch.device("cpu"))
        self.rng = RngPin(list(self.devices.values()))
        self._marked_constants()
        self.faithful_float64()
        self._outputs_probed = self.user_vjp is not None  # see _record_output

    def _record_output(self, out: Any) -> list:
        # The first output that is a structure (a tuple, a dict) is when outputs autograd does not
        # differentiate can exist: probed then, so a function of one tensor pays no extra call.
        if not self._outputs_probed and not self.float_leaf(out):
            self._outputs_probed = True
            self._differentiable_outputs()
        return super()._record_output(out)

    def _marked_constants(self) -> None:
        """Floating tensors without ``requires_grad`` are constants where the caller marked others.

        As ``torch.autograd.gradcheck`` does: a call whose inputs mark some
        tensors ``requires_grad=True`` (batch norm's weight and bias) and not
        others (its running statistics, which the op refuses to
        differentiate) differentiates the marked ones only. Where no tensor
        is marked, every floating input is differentiated.
        """
        if not any(self.requires_grad.get(n) for n in self.point):
            return
        for n in [n for n in self.point if not self.requires_grad.get(n)]:
            del self.point[n]
            self.constants[n] = self.originals.pop(n)

    def _differentiable_outputs(self) -> None:
        """Leave out of the output the floating leaves autograd does not differentiate (as gradcheck does).

        A fused normalisation returns its batch statistics beside its
        result, a least-squares solver its singular values: outputs that
        do not require grad even though the inputs do. Their gradient is
        undefined, not zero, so they are no part of the function checked.
        One call of ``fn`` with the inputs requiring grad finds them; code
        that fails that call, or whose outputs all lack grad (computed
        outside autograd: :meth:`autodiff` warns), keeps every output.
        """
        if self.user_vjp is not None:
            return
        try:
            with torch.enable_grad(), self.rng():
                values = self.convert(dict(zip(self.order, self._args(self.originals))))
                for n in self.point:
                    values[n] = values[n].detach().requires_grad_(True).clone()
                out = self.call_user(values)
        except Exception:  # noqa: BLE001 - the check's own calls report it
            return
        if self.float_leaf(out):
            return
        keep = [bool(v.requires_grad) for v in self.leaves_of(out) if self.float_leaf(v)]
        if any(keep) and not all(keep):
            self.kept_outputs = keep

    def session(self):
        return _torch_threads_for(sum(a.size for a in self.point.values()))

    def random_draws(self) -> str | None:
        """Run ``fn`` once in float64 under the pinned random state; did it draw?"""
        self._call(self.fn, self._args(self.point))
        return _RANDOM if self.rng.used else None

    def custom_primal(self, fn: Callable) -> tuple[Callable | None, str]:
        """``fn`` with every custom ``torch.autograd.Function`` it calls replaced by its ``forward``.

        For ``Function.apply`` itself that is the Function's forward, run
        with a recording ctx; for any other torch code, the code run under
        :func:`primal_functions` (which declines afterwards if the code
        called no custom Function: plain autograd has nothing to check).
        """
        owner = getattr(fn, "__self__", None)
        if isinstance(owner, type) and issubclass(owner, torch.autograd.Function):
            return _Intercepting(fn), f"torch autograd of {owner.__name__}.forward"
        return _Intercepting(fn, require_custom=self.user_vjp is None), f"torch autograd of {getattr(fn, '__name__', type(fn).__name__)} with each custom " \
            "autograd.Function differentiated through its forward"

    def primal_gradients(self, cotangent: np.ndarray, dtype: Any = np.float64):
        """As :meth:`FrameworkFunctionTarget.primal_gradients`, declining at once for plain torch code.

        The analytic pass's autograd graph already tells whether the code
        calls a user-defined ``autograd.Function``; where it calls none,
        the reference run (one more forward and backward) would only
        discover the same and decline.
        """
        if getattr(self, "_calls_custom", None) is False and self.user_vjp is None:
            from ..references import Declined

            raise Declined(f"{_name(self.user_fn)} calls no custom backward: its gradient comes from "
                           f"{self.framework} autodiff itself", applies=False)
        return super().primal_gradients(cotangent, dtype=dtype)

    def is_array(self, value: Any) -> bool:
        return isinstance(value, torch.Tensor)

    def to_numpy(self, value: Any, name: str) -> np.ndarray:
        self.devices[name] = value.device
        self.requires_grad[name] = bool(value.requires_grad)
        if value.is_complex():
            self.complex_inputs.add(name)
        if value.layout != torch.strided:
            self.layouts[name] = value
        elif value.storage_offset() != 0 and value.numel() and not value.is_complex():
            # a view into a larger storage (code may address it: as_strided with a storage offset)
            self.storages[name] = _Storage(value)
        return tensor_to_numpy(value, name, complex_ok=True)

    def to_framework(self, value: np.ndarray, name: str | None, dtype=None) -> Any:
        t = _to_tensor(value, self.devices.get(name, getattr(self, "default_device", None)))
        if name in self.complex_inputs or (dtype is not None and dtype.is_complex and not t.is_complex()):
            t = _as_complex(t)  # the real view back to the complex tensor (shares memory)
        if name in self.layouts:
            t = _like_layout(t, self.layouts[name])
        if name in self.storages:
            t = self.storages[name].view_of(t)
        return t if dtype is None else t.to(dtype)

    def leaf_shape(self, value: Any) -> tuple:
        return _real_shape(value)

    def float_leaf(self, value: Any) -> bool:
        return _float_tensor(value)

    def leaf_to_numpy(self, value: Any) -> np.ndarray:
        return _leaf_numpy(value)

    def run(self, flat):
        values = self.convert(flat)
        with self.rng():
            return self.call_user(values)

    def _vectorised(self, name: str, idx: np.ndarray, vals: np.ndarray) -> np.ndarray:
        """One ``vmap`` call of ``fn`` over single-element perturbations of input ``name``."""
        base = self.convert(dict(zip(self.order, self._args(self.point))))
        b = base[name]
        return self._vmap_over(base, {name: _perturbed_rows(torch.view_as_real(b) if b.is_complex() else b, idx,
                                                            vals)})

    def _vectorised_rows(self, rows: dict[str, np.ndarray]) -> np.ndarray:
        """One ``vmap`` call of ``fn`` over whole values of the inputs ``rows`` names."""
        base = self.convert(dict(zip(self.order, self._args(self.point))))
        return self._vmap_over(base, {k: torch.from_numpy(r).to(base[k].device) for k, r in rows.items()})

    def _vmap_over(self, base: dict, rows: dict[str, torch.Tensor]) -> np.ndarray:
        if self.layouts or any(k in self.storages for k in rows):
            # vmap batches plain tensors only: sparse inputs keep their layout, views their storage, in the loop
            raise NotImplementedError("sparse inputs and views with a storage offset are evaluated one by one")
        self.random.restore()
        names = list(rows)

        def one(*xs):
            values = dict(base)
            for k, xk in zip(names, xs):
                values[k] = _as_complex(xk) if k in self.complex_inputs else xk
            return _joined(self.call_user(values), self.kept_outputs)

        # No random state to pin: vmap refuses random draws (randomness="error"), and code that draws falls back.
        return _vmap(one, *rows.values())

    def _output_row_shapes(self, want: np.ndarray) -> list[tuple]:
        return list(self._out_shapes)

    def _batch_axis(self, name: str, rows: np.ndarray, *, owned: bool) -> list:
        """``fn`` once with input ``name`` given a leading batch axis (``rows``), under ``torch.no_grad()``.

        What vmap refuses runs here where its code broadcasts: an
        ``autograd.Function`` without a vmap rule (its ``apply`` on a
        batched tensor runs its ``forward`` on it), code calling
        ``.item()``. Under the pinned random state, like every evaluation.
        Returns the output's floating leaves as numpy (the real view of a
        complex one).
        """
        if self.layouts or name in self.storages or name in self.complex_inputs:
            raise NotImplementedError("sparse, complex and storage-offset inputs are evaluated one by one")
        self.random.restore()
        values = self.convert(dict(zip(self.order, self._args(self.point))))
        values[name] = torch.from_numpy(rows if owned else rows.copy()).to(values[name].device)
        with torch.no_grad(), self.rng():
            out = self.call_user(values)
        if self.float_leaf(out):
            leaves = [out]
        else:
            leaves = [v for v in self.leaves_of(out) if self.float_leaf(v)]
            if self.kept_outputs is not None and self.user_vjp is None and len(self.kept_outputs) == len(leaves):
                leaves = [v for v, k in zip(leaves, self.kept_outputs) if k]
        return [self.leaf_to_numpy(v) for v in leaves]

    def autodiff(self, pieces, flat):
        with torch.enable_grad(), self.rng():
            values = self.convert(flat)
            leaves = {}
            for n in self.point:
                # The code gets a clone: it may write into its input (mark_dirty) without touching the leaf.
                leaves[n] = values[n].detach().requires_grad_(True)
                values[n] = self.storages[n].clone_of(leaves[n]) if n in self.storages else leaves[n].clone()
            out = self.call_user(values)
        outs = self._record_output(out)
        if len(outs) != len(pieces):
            raise ProtocolError("the function returned a different number of outputs on this call")
        if self.user_vjp is None and getattr(self, "_calls_custom", None) is None:
            # (once: every backward of a check runs the same code at the same point -- the analytic pass's
            # second run must reproduce the first)
            self._calls_custom = _calls_custom_function(outs)
        pairs = [(o, _cotangent(p, o))
                 for o, p in zip(outs, pieces) if o.requires_grad]
        names = list(leaves)
        if pairs:
            grads = _autograd([o for o, _ in pairs], [leaves[n] for n in names], [g for _, g in pairs], self.what)
        else:
            self._warn("no output of the function requires grad: autograd sees no dependence on the inputs "
                       "(detached, or computed outside torch?); the gradient under test is zero")
            grads = [None] * len(names)
        out = {n: _leaf_numpy(g if g is not None else torch.zeros_like(leaves[n])) for n, g in zip(names, grads)}
        for n in out:
            if n in self.layouts:  # a sparse input's gradient on its specified elements (see _like_layout)
                out[n] = np.where(sparse_pattern(self.layouts[n]), out[n], 0).astype(out[n].dtype)
        return out


# ---------------------------------------------------------------------------
# torch.nn.Module
# ---------------------------------------------------------------------------

class _Copy:
    """A deep copy of the module for the finite differences, with numpy views of its parameters."""

    def __init__(self, module: torch.nn.Module, names: list[str], float64: bool):
        try:
            m = copy.deepcopy(module)
        except Exception as exc:  # noqa: BLE001 - say what to fix
            raise ProtocolError(f"{type(module).__name__} cannot be deep-copied ({type(exc).__name__}: {exc}); "
                                "the check perturbs a copy so that the module itself is never touched") from None
        if float64:
            m = m.double()
        self.module = m
        params = dict(m.named_parameters())
        self.params = {n: params[n] for n in names}
        self.views: dict[str, np.ndarray | None] = {}
        for n, p in self.params.items():
            self.views[n] = p.detach().numpy() if p.device.type == "cpu" else None
        self.buffers = [(b, b.detach().clone()) for b in m.buffers()]

    def load(self, point: Mapping[str, np.ndarray]) -> None:
        with torch.no_grad():
            for n, p in self.params.items():
                arr = point[n]
                if arr is not self.views[n]:
                    p.copy_(torch.from_numpy(arr))
            for b, saved in self.buffers:
                b.copy_(saved)


class TorchModuleTarget(BatchedEvaluation, Target):
    """A ``torch.nn.Module`` (see the module docstring).

    The input is named ``"x"`` (``"input"`` if a parameter is called
    ``x``); several inputs (a sequence) are named after ``forward``'s
    parameters, a dict of inputs is passed by keyword. Parameters with
    ``requires_grad=False`` and integer inputs (embedding indices) are
    constants. Outputs may be a tensor or a nested tuple of tensors (an
    LSTM's ``(out, (h, c))``): the floating-point leaves are concatenated.

    Cost per evaluation: one forward of the float64 copy; the analytic pass
    is one forward and one ``torch.autograd.grad`` of the module as given.
    Full checks evaluate the perturbations of a parameter in batches,
    ``torch.func.vmap`` over ``torch.func.functional_call`` with the
    parameter batched (an input: over the forward), falling back to a plain
    loop where the module cannot be vmapped (batch norm updating running
    statistics in training mode, dropout, value-dependent control flow).
    """

    kind = "layer"

    def __init__(self, module: torch.nn.Module, inputs: Any):
        super().__init__()
        self.module = module
        pnames = [n for n, _ in module.named_parameters()]
        values, self.by_keyword = split_inputs(inputs, is_tensor)
        if self.by_keyword:
            names = list(values)
        elif len(values) == 1:
            names = ["input" if "x" in pnames else "x"]
        else:
            names = _signature_names(module.forward, len(values)) or [str(i) for i in range(len(values))]
            names = names[:len(values)]
        clash = set(names) & set(pnames)
        if clash:
            raise SpecError(f"input name(s) {sorted(clash)} clash with parameter names of {type(module).__name__}; "
                            "pass the inputs as a sequence or rename them")
        self.order = names
        vals = dict(zip(names, values.values() if self.by_keyword else values))
        self.opaque: dict[str, Any] = {}
        self.devices: dict[str, Any] = {}
        mdev = next((t.device for t in list(module.parameters()) + list(module.buffers())), None)
        self.inputs_float: list[str] = []
        for name, v in vals.items():
            if isinstance(v, torch.Tensor):
                self.devices[name] = v.device
                arr = _to_array(tensor_to_numpy(v, name), name)  # complex refused: a module's input is real
            elif isinstance(v, (np.ndarray, np.generic)):
                self.devices[name] = mdev or torch.device("cpu")
                arr = _to_array(v, name)
            else:
                self.opaque[name] = v
                continue
            if arr.dtype.kind == "f":
                self.point[name] = arr.astype(np.float64)
                self.originals[name] = arr
                self.inputs_float.append(name)
            else:
                self.constants[name] = arr
        self.param_names: list[str] = []
        self.orig_params: dict[str, torch.nn.Parameter] = {}
        for name, p in module.named_parameters():
            if p.dtype == torch.bfloat16:
                raise SpecError(f"parameter {name!r} is bfloat16, which numpy cannot hold; check module.float()")
            if not p.is_floating_point() or p.numel() == 0:
                continue
            if not p.requires_grad:
                self.constants[name] = tensor_to_numpy(p, name)
                continue
            self.param_names.append(name)
            self.orig_params[name] = p
            self.originals[name] = tensor_to_numpy(p, name)
        if not self.param_names and not self.inputs_float:
            raise NoDifferentiableInputs(
                f"{type(module).__name__} has no trainable floating-point parameter and no floating-point input: "
                "nothing to differentiate"
            )
        self.rng = RngPin(list(self.devices.values()) + ([mdev] if mdev is not None else []))
        self.kept_outputs: list[bool] | None = None
        self._differentiable_outputs()
        self._copies: dict[bool, _Copy] = {}
        self._use64 = True
        c64 = self._copy(True)
        for n in self.param_names:
            view = c64.views[n]
            self.point[n] = view if view is not None else self.originals[n].astype(np.float64)
        low = sorted({v.dtype.name for v in self.originals.values() if v.dtype != np.float64})
        if low:
            # Is the float64 copy the same function as the module in its own dtype? (see
            # FrameworkFunctionTarget.faithful_float64; cost: two forwards)
            try:
                y64 = self._forward(True, self.point)
                reason = _RANDOM if self.rng.used else dtype_dependence(y64, self._forward(False, self.originals), low)
            except Exception:  # noqa: BLE001 - the check's own fallback reports it
                reason = None
            if reason:
                self._use64 = False
                corig = self._copy(False)
                for n in self.point:
                    view = corig.views.get(n)
                    self.point[n] = view if view is not None else self.originals[n].copy()
                self._warn(f"{type(module).__name__} {reason}, so the finite differences ran in the caller's dtype "
                           f"({', '.join(low)}); the verdict is coarser than a float64 check")

    def _differentiable_outputs(self) -> None:
        """Leave out the floating outputs autograd does not differentiate (as :class:`TorchFunctionTarget` does).

        One forward of the module as given, its buffers restored after.
        """
        saved = [(b, b.detach().clone()) for b in self.module.buffers()]
        try:
            with torch.enable_grad(), self.rng():
                args, kwargs, _ = self._inputs(self.originals, grad=True)
                out = self.module(*args, **kwargs)
            if not _float_tensor(out):
                keep = [bool(v.requires_grad) for v in flatten_tree(out, is_tensor) if _float_tensor(v)]
                if any(keep) and not all(keep):
                    self.kept_outputs = keep
        except Exception:  # noqa: BLE001 - the check's own calls report it
            pass
        finally:
            with torch.no_grad():
                for b, v in saved:
                    b.copy_(v)

    def _copy(self, float64: bool) -> _Copy:
        if float64 not in self._copies:
            self._copies[float64] = _Copy(self.module, self.param_names, float64)
        return self._copies[float64]

    def _inputs(self, source: Mapping[str, np.ndarray], grad: bool):
        leaves = {}

        def conv(name):
            if name in self.opaque:
                return self.opaque[name]
            arr = source[name].copy() if name in source else self.constants[name].copy()
            t = _to_tensor(arr, self.devices.get(name))
            if grad and name in self.inputs_float:
                leaf = t.requires_grad_(True)
                leaves[name] = leaf
                return leaf.clone()  # in-place first ops (ReLU(inplace=True)) need a non-leaf
            return t

        if self.by_keyword:
            return [], {n: conv(n) for n in self.order}, leaves
        return [conv(n) for n in self.order], {}, leaves

    def _outputs(self, out: Any, what: str) -> list:
        leaves = [v for v in flatten_tree(out, is_tensor) if _float_tensor(v)]
        if self.kept_outputs is not None and len(self.kept_outputs) == len(leaves) and not _float_tensor(out):
            leaves = [v for v, k in zip(leaves, self.kept_outputs) if k]
        if not leaves:
            raise ProtocolError(f"{what} returned {type(out).__name__} with no floating-point tensor in it")
        self._single = _float_tensor(out)
        return leaves

    def session(self):
        return _torch_threads_for(sum(a.size for a in self.point.values()))

    def _call_module(self, module: torch.nn.Module, args: list, kwargs: dict) -> Any:
        """``module(*args, **kwargs)``; what it raises becomes a CodeUnderTestError naming its forward."""
        __tracebackhide__ = True
        return call_user(f"{type(self.module).__name__}.forward", "forward", module, args, kwargs,
                         names=[n for n in self.order if not self.by_keyword])

    def evaluate(self) -> np.ndarray:
        return self._forward(self._use64 and all(v.dtype == np.float64 for v in self.point.values()), self.point)

    def _forward(self, use64: bool, source: Mapping[str, np.ndarray]) -> np.ndarray:
        c = self._copy(use64)
        c.load(source)
        args, kwargs, _ = self._inputs(source, grad=False)
        with torch.no_grad(), self.rng():
            out = self._call_module(c.module, args, kwargs)
        leaves = self._outputs(out, f"{type(self.module).__name__}.forward")
        return join_outputs([_leaf_numpy(v) for v in leaves], self._single)

    def _vectorised(self, name: str, idx: np.ndarray, vals: np.ndarray) -> np.ndarray:
        """One ``vmap`` call of the float64 copy over single-element perturbations of parameter or input ``name``."""
        return self._vmap_over({name: lambda base: _perturbed_rows(base, idx, vals)})

    def _vectorised_rows(self, rows: dict[str, np.ndarray]) -> np.ndarray:
        """One ``vmap`` call of the float64 copy over whole values of the parameters or inputs ``rows`` names."""
        return self._vmap_over({k: (lambda base, r=r: torch.from_numpy(r).to(base.device)) for k, r in rows.items()})

    def _vmap_over(self, makers: dict[str, Callable[[torch.Tensor], torch.Tensor]]) -> np.ndarray:
        """``vmap`` over the rows ``makers[name](its value at the point)`` of each parameter or input named."""
        from torch.func import functional_call

        use64 = self._use64 and all(v.dtype == np.float64 for v in self.point.values())
        c = self._copy(use64)
        c.load(self.point)
        args, kwargs, _ = self._inputs(self.point, grad=False)
        names = list(makers)
        rows = [makers[k](c.params[k].detach() if k in c.params else
                          kwargs[k] if self.by_keyword else args[self.order.index(k)]) for k in names]

        def one(*xs):
            a, kw, params = list(args), dict(kwargs), {}
            for k, xk in zip(names, xs):
                if k in c.params:
                    params[k] = xk
                elif self.by_keyword:
                    kw[k] = xk
                else:
                    a[self.order.index(k)] = xk
            out = functional_call(c.module, params, tuple(a), kw) if params else c.module(*a, **kw)
            return _joined(out, self.kept_outputs)

        with torch.no_grad():
            return _vmap(one, *rows)

    def exact_references(self) -> tuple[str, ...]:
        return ("torch",)

    def primal_gradients(self, cotangent: np.ndarray, dtype: Any = np.float64
                         ) -> tuple[dict[str, np.ndarray], np.ndarray]:
        """Torch autograd of the module's float64 copy with every custom Function replaced by its forward.

        Raises:
            Declined: the module calls no custom ``autograd.Function`` (plain
                autograd is what is under test), or its forward is not
                differentiable by autograd.
        """
        from ..references import Declined

        if np.dtype(dtype) != np.float64:
            raise Declined("the module's reference runs in float64 only")
        use64 = self._use64 and all(v.dtype == np.float64 for v in self.point.values())
        c = self._copy(use64)
        c.load(self.point)
        saved = [(b, b.detach().clone()) for b in c.module.buffers()]
        flags = {n: p.requires_grad for n, p in c.params.items()}
        seen: list = []
        try:
            with primal_functions(seen):
                with torch.enable_grad(), self.rng():
                    args, kwargs, leaves = self._inputs(self.point, grad=True)
                    params = {n: p.requires_grad_(True) for n, p in c.params.items() if n in self.point}
                    out = c.module(*args, **kwargs)
                outs = self._outputs(out, f"{type(self.module).__name__}.forward")
                wrt = {**leaves, **params}
                names = [n for n in self.point if n in wrt]
                pieces = split_cotangent(cotangent, [_real_shape(o) for o in outs], self._single)
                pairs = [(o, _cotangent(p, o)) for o, p in zip(outs, pieces) if o.requires_grad]
                grads = _autograd([o for o, _ in pairs], [wrt[n] for n in names], [g for _, g in pairs],
                                  "torch autograd of the module's forwards") if pairs else [None] * len(names)
            if not seen:
                raise Declined(f"{type(self.module).__name__} calls no custom backward: its gradient comes from torch "
                               "autograd itself", applies=False)
        finally:
            with torch.no_grad():
                for b, s in saved:
                    b.copy_(s)
            for n, p in c.params.items():
                p.requires_grad_(flags[n])
        result = {n: (_leaf_numpy(g).astype(np.float64) if g is not None else np.zeros(self.point[n].shape))
                  for n, g in zip(names, grads)}
        return result, join_outputs([_leaf_numpy(o.detach()) for o in outs], self._single)

    def analytic(self, cotangent: np.ndarray) -> dict[str, np.ndarray]:
        # Buffers (running statistics...) are restored once the gradients are
        # computed: the backward of some modules reads them.
        saved = [(b, b.detach().clone()) for b in self.module.buffers()]
        try:
            with torch.enable_grad(), self.rng():
                args, kwargs, leaves = self._inputs(self.originals, grad=True)
                out = self._call_module(self.module, args, kwargs)
            outs = self._outputs(out, f"{type(self.module).__name__}.forward")
            pieces = split_cotangent(cotangent, [_real_shape(o) for o in outs], self._single)
            wrt = {**leaves, **self.orig_params}
            names = list(wrt)
            pairs = [(o, _cotangent(p, o))
                     for o, p in zip(outs, pieces) if o.requires_grad]
            if pairs:
                grads = _autograd([o for o, _ in pairs], [wrt[n] for n in names], [g for _, g in pairs],
                                  f"{type(self.module).__name__} (torch autograd)")
            else:
                self._warn("no output of the module requires grad: autograd sees no dependence on the input or "
                           "the parameters; the gradient under test is zero")
                grads = [None] * len(names)
        finally:
            with torch.no_grad():
                for b, s in saved:
                    b.copy_(s)
        self.analytic_output = join_outputs([_leaf_numpy(o) for o in outs], self._single)
        result = {n: _leaf_numpy(g if g is not None else torch.zeros_like(wrt[n])) for n, g in zip(names, grads)}
        return validate_gradients(result, self.originals, what=f"{type(self.module).__name__} (torch autograd)")


def module_inputs(module: torch.nn.Module, input_shape: Any, inputs: Any, dtype: Any, rng) -> Any:
    """The inputs of a module check: ``inputs`` as given, or drawn from ``rng`` with ``input_shape``."""
    p = next((p for p in module.parameters() if p.is_floating_point()), None)
    default = torch.empty((), dtype=p.dtype if p is not None else torch.get_default_dtype()).numpy().dtype
    drawn = draw_input(input_shape, inputs, dtype, default, rng, what="module")
    if drawn is not None:
        dev = next((p.device for p in module.parameters()), torch.device("cpu"))
        return torch.from_numpy(drawn).to(dev)
    if dtype is not None:
        dt = np.dtype(dtype)
        if isinstance(inputs, torch.Tensor):
            return inputs.to(torch.from_numpy(np.zeros(0, dt)).dtype)
        if isinstance(inputs, np.ndarray):
            return inputs.astype(dt)
    return inputs
