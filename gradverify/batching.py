"""Batched evaluation: many perturbations of one tensor evaluated in a few calls of the code under test.

A full check evaluates four perturbations per element, fast mode four
displaced points per probe. Evaluated one by one, each costs a call of the
code with its fixed overhead; a target mixing in :class:`BatchedEvaluation`
serves them in batches instead, by the first of its
:attr:`~BatchedEvaluation.batch_strategies` that works for the tensor:

``"vmap"``
    the framework vectorises the call (``torch.func.vmap``, ``jax.vmap``,
    ``tf.vectorized_map``): the subclass's :meth:`~BatchedEvaluation._vectorised`
    and :meth:`~BatchedEvaluation._vectorised_rows`. Verified once per
    tensor (the framework defines the batching rules).
``"batch axis"``
    the batch axis the code already accepts: one call with the tensor given
    a leading axis of ``B`` rows (shape ``(B, *shape)``, or ``(B, 1, ...,
    1, *shape)`` so that the batch axis lies left of every other input's
    axes: a bias ``(h,)`` added to ``x @ W`` of shape ``(n, h)`` is given
    as ``(B, 1, h)``), the other inputs as they are. Elementwise code,
    ``x @ W``, ``np.tanh(x @ W + b)`` and reductions over the last axes
    broadcast over it; code that reduces over all axes, transposes, or
    indexes ``x[0]`` returns the wrong shape or wrong values. The subclass
    makes the call (:meth:`~BatchedEvaluation._batch_axis`). This path
    trusts broadcasting semantics, so every call is verified against
    one-by-one evaluations: a tensor's first call is a trial of
    :data:`TRIAL_ROWS` rows whose first and last rows must agree (code that
    reads a fixed row of the batch, ``x * x[0]``, or mixes them,
    ``x - x.mean(axis=0)``, disagrees on one of them; code whose cost
    multiplies on a batch, an outer product of the flattened input, does
    so on a few rows), and each later call's last row must agree (a global
    ``x.max()`` moved by one row of a call moves all the others).
``"loop"``
    where neither applies: ``evaluate`` per row, the tensor changed in
    place and restored bit for bit.

The strategy chosen is memoised per tensor; why another was refused is
kept in :attr:`~BatchedEvaluation.batch_fallbacks`. Either way the rows
returned are the outputs ``evaluate`` would give (within
:data:`BATCH_AGREEMENT` ulps), and ``point`` is left bit for bit as it was.
"""

from __future__ import annotations

import warnings

import numpy as np

__all__ = ["BATCH_AGREEMENT", "TRIAL_ROWS", "BatchedEvaluation", "rows_disagree"]

#: Vectorised and one-by-one evaluations of a row must agree within this many
#: ulps of the row's largest output (summation order may differ between a
#: batched and a plain kernel; anything else is a different function).
BATCH_AGREEMENT = 64

#: Rows of a tensor's first call along the batch axis (its trial).
TRIAL_ROWS = 4


class _Refused(Exception):
    """A batched call that is not the one-by-one evaluations (why in ``args[0]``)."""


class BatchedEvaluation:
    """Batched evaluation for targets that can serve many evaluations in one call (see the module docstring).

    Two requests, each about one tensor ``point[name]`` (everything else at
    the base point), each returning the stacked outputs:

    * :meth:`evaluate_batch` -- many single-element perturbations (row
      ``b``: element ``flat_indices[b]`` set to ``values[b]``), what
      :func:`~gradverify.numeric.projected_gradients` hands over;
    * :meth:`evaluate_rows` -- many whole values of the tensor (row ``b``:
      ``point[name]`` replaced by ``rows[b]``), e.g. the points ``x + t v``
      of several directional probes.

    Strategies, tried in the order of :attr:`batch_strategies` on the first
    request for a tensor, the first that works kept for it:

    * ``"vmap"``: the subclass's :meth:`_vectorised` /
      :meth:`_vectorised_rows` (one framework call each), trusted once
      verified on the first request it serves: its last row is
      re-evaluated through ``evaluate`` and must agree to rounding
      (:data:`BATCH_AGREEMENT` ulps of the row's largest output; the last
      row, since a batching error that leaves some row right typically
      leaves the first one right);
    * ``"batch axis"``: the subclass's :meth:`_batch_axis` (one call of the
      code on the tensor with a leading axis of rows), verified on every
      call since it trusts broadcasting semantics (the first and last rows
      of the tensor's first call, a trial of :data:`TRIAL_ROWS` rows, and
      the last row of each later call); a call that disagrees after earlier
      ones agreed keeps those and sends the tensor to the loop from then
      on.

    Code that cannot be vectorised -- Python control flow on values,
    ``.item()``/``.numpy()`` calls, in-place writes into captured tensors,
    random draws whose shape follows the input, an ``autograd.Function``
    without a vmap rule (for vmap) -- raises in the vectorised call or
    disagrees, and the next strategy is tried; the last resort is a plain
    loop over ``evaluate`` (why in :attr:`batch_fallbacks`, which strategy
    runs in :attr:`batch_strategy`). Either way the rows returned are the
    outputs ``evaluate`` would give, and ``point`` is left bit for bit as
    it was.

    Cost: vmap's verification re-runs one row once per tensor, the batch
    axis's one row per call and two for the trial (none in the check's
    count); a vectorised call costs one call of the code on ``rows x
    tensor size`` elements. Calls are split so that their copies of the
    tensor stay under :attr:`batch_input_bytes` (:meth:`_rows_per_call`,
    :meth:`_axis_rows_per_call`). Requests of fewer than
    :attr:`batch_min_rows` rows run as a loop.
    """

    #: The strategies tried, in order (see the class docstring); a subclass names those it implements.
    batch_strategies: tuple[str, ...] = ("vmap",)
    #: Cap, in bytes, on the copies of a tensor in one vectorised call
    #: (calls of a few MiB stay in cache; the check's ``batch_bytes``
    #: bounds the outputs).
    batch_input_bytes = 2 * 2**20
    #: Cap, in bytes, on the rows of one vmap call of :meth:`evaluate_rows` / :meth:`evaluate_points`: the
    #: caller formed them already (within its own budget), so splitting bounds only the framework's
    #: intermediates; a larger share than :attr:`batch_input_bytes` keeps a fast-mode probe's 16 rows of a
    #: 20,000-weight matrix in one call (two calls cost 1.7x one on the benchmark MLP).
    batch_rows_bytes = 8 * 2**20
    #: Cap on the rows of one vectorised call.
    batch_max_rows = 4096
    #: Requests of fewer rows run as a loop (a vectorised call's fixed cost,
    #: and the verification, would not pay for themselves; a noise table's 9
    #: points do).
    batch_min_rows = 8
    #: Cap, in bytes, on the outputs of one request of a full check (its
    #: ``batch_bytes``); None: the check's own (64 MiB).
    batch_output_bytes: int | None = None

    def _batch_memo(self) -> tuple[dict, dict]:
        memo = getattr(self, "_batch_state", None)
        if memo is None:
            memo = self._batch_state = ({}, {})
        return memo

    @property
    def batch_fallbacks(self) -> dict:
        """Tensor name -> why a strategy was refused for it (``"vmap: ..."``, ``"batch axis: ..."``, ``; ``-joined).

        Empty while every tensor runs on the first of :attr:`batch_strategies`.
        """
        return self._batch_memo()[1]

    @property
    def batch_strategy(self) -> dict:
        """Tensor name -> the strategy serving its requests (``"vmap"``, ``"batch axis"``, ``"loop"``), once decided."""
        return {k: ("loop" if v is False else v[0]) for k, v in self._batch_memo()[0].items()}

    def evaluate_batch(self, name: str, flat_indices, values) -> np.ndarray:
        """Outputs of many single-element perturbations of ``point[name]``, stacked (see the class docstring)."""
        idx = np.asarray(flat_indices, dtype=np.int64).reshape(-1)
        vals = np.asarray(values).astype(self.point[name].dtype, copy=False).reshape(-1)
        return self._batched(name, idx.size, lambda s: self._vectorised(name, idx[s], vals[s]),
                             lambda s: (self._perturbed_rows(name, idx[s], vals[s]), True),
                             lambda sel: self._loop_batch(name, idx[sel], vals[sel]))

    def evaluate_rows(self, name: str, rows) -> np.ndarray:
        """Outputs with ``point[name]`` replaced by each of ``rows`` (shape ``(B, *point[name].shape)``), stacked."""
        arr = self.point[name]
        rows = np.ascontiguousarray(np.asarray(rows).astype(arr.dtype, copy=False))
        if rows.shape[1:] != arr.shape:
            raise ValueError(f"rows for {name!r} have shape {rows.shape[1:]}, the tensor {arr.shape}")
        return self._batched(name, len(rows), lambda s: self._vectorised_rows({name: rows[s]}),
                             lambda s: (rows[s], False),
                             lambda sel: self._loop_rows({name: rows[sel]}), step=self._rows_per_call(name, given=True))

    @property
    def points_batched(self) -> bool:
        """Whether :meth:`evaluate_points` may vectorise (vmap: the batch axis serves one tensor at a time)."""
        return "vmap" in self.batch_strategies and getattr(self, "evaluate_rows", None) is not None

    def evaluate_points(self, rows, moved=None) -> np.ndarray:
        """Outputs with every ``point[name]`` of ``rows`` replaced by its row ``b`` at once (row ``b`` of the result).

        ``rows[name]`` has shape ``(B, *point[name].shape)``, one ``B`` for
        all; the inputs ``rows`` does not name stay at the point. One vmap
        call moves several tensors together (a noise table's points along a
        direction over every input), verified and memoised per set of names
        (kept in :attr:`batch_fallbacks` under the tuple of names); one
        tensor is :meth:`evaluate_rows`. Where the target does not vmap
        (:attr:`points_batched`) or the call is refused, a loop; but where
        ``moved`` (one name per row) says that each row moves that tensor
        only (the others at the point: fast mode's probes of several small
        tensors), :meth:`evaluate_rows` per tensor instead, each by its own
        strategy (code that vmaps while one tensor is batched, not while
        two are, keeps its batched calls).
        """
        given = {}
        for name, r in rows.items():
            arr = self.point[name]
            r = np.ascontiguousarray(np.asarray(r).astype(arr.dtype, copy=False))
            if r.shape[1:] != arr.shape:
                raise ValueError(f"rows for {name!r} have shape {r.shape[1:]}, the tensor {arr.shape}")
            given[name] = r
        counts = {len(r) for r in given.values()}
        if len(counts) != 1:
            raise ValueError(f"rows of different lengths: {sorted(counts)}")
        n = counts.pop()
        if moved is not None:
            moved = np.asarray(moved)
            if moved.shape != (n,) or not set(moved.tolist()) <= set(given):
                raise ValueError(f"moved must name one of the tensors given for each of the {n} rows")

        def loop(sel):
            if moved is None or not isinstance(sel, slice):  # (a vmap call's verification: one by one)
                return self._loop_rows({k: r[sel] for k, r in given.items()})
            out = None
            for name in dict.fromkeys(moved.tolist()):
                mine = moved == name
                ys = self.evaluate_rows(name, given[name][mine])
                if out is None:
                    out = np.empty((n,) + ys.shape[1:], dtype=ys.dtype)
                out[mine] = ys
            return out

        if not self.points_batched:
            return loop(slice(None))
        if len(given) == 1:
            return self.evaluate_rows(*next(iter(given.items())))
        size = max(1, sum(self.point[k].size * self.point[k].itemsize for k in given))
        step = int(min(self.batch_max_rows, max(1, self.batch_rows_bytes // size)))
        return self._batched(tuple(given), n, lambda s: self._vectorised_rows({k: r[s] for k, r in given.items()}),
                             None, loop, step=step)

    # -- choosing and running a strategy -------------------------------------
    def _batched(self, name, n: int, vectorised, rows, loop, step: int | None = None) -> np.ndarray:
        """The request's outputs by the tensor's strategy (chosen now on its first request).

        ``vectorised(s)`` is one vmap call over the rows ``s`` (a slice; at
        most ``step`` rows, :meth:`_rows_per_call` by default), ``rows(s)``
        those rows as an array and whether it is a fresh copy the code may
        write into (None: no batch axis, for points moving several tensors,
        ``name`` then their tuple), ``loop(sel)`` the rows ``sel`` one by one.
        """
        status, fallbacks = self._batch_memo()
        chosen = status.get(name)
        if chosen is False or n < max(1, self._min_rows(name)):
            return loop(slice(None))
        if chosen is not None:
            if chosen[0] == "vmap":
                return self._vmap_calls(name, n, vectorised, step)
            return self._axis_calls(name, n, chosen[1], rows, loop, start=0)
        reasons = []
        for strategy in self.batch_strategies:
            if strategy == "vmap":
                try:
                    out = self._vmap_calls(name, n, vectorised, step)
                except Exception as exc:  # noqa: BLE001 - not vectorisable: the next strategy
                    reasons.append(f"vmap: {_first_line(exc)}")
                    continue
                why = rows_disagree(out[[n - 1]], loop(np.array([n - 1])))
                if why is None:
                    status[name] = ("vmap",)
                    self._note(name, reasons)
                    return out
                reasons.append(f"vmap: {why}")
            elif strategy == "batch axis" and rows is not None:
                if self._axis_rows_per_call(name) <= 2:
                    # (each call's last row is verified one by one: calls of two rows save nothing, and a trial
                    # of more would hold more copies of the tensor than the memory allowed to a batch)
                    reasons.append("batch axis: the memory allowed to a batch holds at most two copies of the "
                                   "tensor")
                    continue
                out = self._axis_trial(name, n, rows, loop, reasons)
                if out is not None:
                    self._note(name, reasons)
                    return out
        status[name] = False
        self._note(name, reasons or ["no batched strategy"])
        return loop(slice(None))

    def _note(self, name: str, reasons: list) -> None:
        if reasons:
            self._batch_memo()[1][name] = "; ".join(reasons)

    def _vmap_calls(self, name: str, n: int, vectorised, step: int | None = None) -> np.ndarray:
        step = step or self._rows_per_call(name)
        parts = [np.asarray(vectorised(slice(s, s + step))) for s in range(0, n, step)]
        return parts[0] if len(parts) == 1 else np.concatenate(parts)

    def _axis_trial(self, name: str, n: int, rows, loop, reasons: list) -> np.ndarray | None:
        """The first call along the batch axis for ``name``: :data:`TRIAL_ROWS` rows, each padding tried; the rest.

        Returns the request's outputs once a padding works (memoised), or
        None (each refusal appended to ``reasons``).
        """
        k = min(n, TRIAL_ROWS)
        check = np.array([0, k - 1]) if k > 1 else np.array([0])
        want = loop(check)
        self._batch_row_bytes = 8 * int(want[0].size)  # one row of outputs, as the caller holds it (float64)
        status = self._batch_memo()[0]
        for pad in self._axis_pads(name, want):
            batch, owned = rows(slice(0, k))
            try:
                got = self._axis_call(name, batch, pad, want, owned=owned)
            except _Refused as exc:
                reasons.append(f"batch axis: {exc.args[0]}")
                continue
            except Exception as exc:  # noqa: BLE001 - the code does not take a batch axis: the next padding
                reasons.append(f"batch axis: {_first_line(exc)}")
                continue
            why = rows_disagree(got[check], want)
            if why is not None:
                reasons.append(f"batch axis{' (padded)' if pad else ''}: {why}")
                continue
            status[name] = ("batch axis", pad)
            if k == n:
                return got
            out = np.empty((n,) + got.shape[1:], dtype=got.dtype)
            out[:k] = got
            del got
            return self._axis_calls(name, n, pad, rows, loop, start=k, out=out)
        return None

    def _axis_calls(self, name: str, n: int, pad: int, rows, loop, start: int,
                    out: np.ndarray | None = None) -> np.ndarray:
        """Rows ``start:n`` along the batch axis into ``out`` (allocated here when None), each call verified.

        Each call's last row is re-evaluated one by one and must agree (the
        trial checked the first and last rows of a call: the rows of a call
        of code that mixes them are wrong but for the one that moved the
        others, and code that reads a fixed row of the batch got caught
        there). A call that disagrees (or raises) sends the tensor to the
        loop for the rest of this request and all later ones; the calls
        verified before it are kept.
        """
        status = self._batch_memo()[0]
        step = self._axis_rows_per_call(name)

        def put(sl: slice, piece: np.ndarray) -> None:
            nonlocal out
            if out is None:
                out = np.empty((n,) + piece.shape[1:], dtype=piece.dtype)
            out[sl] = piece

        while start < n:
            stop = min(n, start + step)
            if stop - start <= 2:  # verifying would cost about as much as the loop
                put(slice(start, stop), loop(slice(start, stop)))
                start = stop
                continue
            want = loop(np.array([stop - 1]))
            batch, owned = rows(slice(start, stop))
            try:
                got = self._axis_call(name, batch, pad, want, owned=owned)
                why = rows_disagree(got[-1:], want)
            except _Refused as exc:
                why = exc.args[0]
            except Exception as exc:  # noqa: BLE001 - the code refused this batch: the loop from now on
                why = _first_line(exc)
            del batch
            if why is not None:
                status[name] = False
                prior = self.batch_fallbacks.get(name)
                self._note(name, ([prior] if prior else []) + [f"batch axis: a later call (rows {start}..{stop - 1} "
                                                               f"of a request) disagreed: {why}"])
                put(slice(start, n), loop(slice(start, n)))
                break
            put(slice(start, stop), got)
            del got
            start = stop
        return out

    def _axis_pads(self, name: str, want: np.ndarray) -> list[int]:
        """Leading singleton axes to try between the batch axis and the tensor's own, most first.

        Enough to put the batch axis left of every other input's axes and
        the output's (numpy broadcasting aligns trailing axes), then none.
        """
        ranks = [np.ndim(a) for a in self.point.values()]
        ranks += [np.ndim(a) for a in getattr(self, "constants", {}).values() if isinstance(a, np.ndarray)]
        ranks.append(want.ndim - 1)
        ranks += [len(s) for s in self._output_row_shapes(want)]
        pad = max(0, max(ranks) - self.point[name].ndim)
        return [pad, 0] if pad else [0]

    def _output_row_shapes(self, want: np.ndarray) -> list[tuple]:
        """The shapes of one evaluation's output leaves (``want``: evaluations stacked; one array: its shape)."""
        return [tuple(want.shape[1:])]

    def _axis_call(self, name: str, batch: np.ndarray, pad: int, want: np.ndarray, *, owned: bool) -> np.ndarray:
        """One call along the batch axis: outputs shaped ``(B, *one row's output)``, in the loop's dtype.

        Raises:
            _Refused: an output leaf is not shaped ``(B, [1, ...,] *its shape in one evaluation)``.
        """
        b = len(batch)
        arr = self.point[name]
        shaped = batch.reshape((b,) + (1,) * pad + arr.shape)
        with warnings.catch_warnings():
            # what the code says about a shape it was not written for (torch: x.T of a 3-d tensor) is not the
            # user's concern; what it says about its values, the one-by-one evaluations beside say too
            warnings.simplefilter("ignore")
            leaves = self._batch_axis(name, shaped, owned=owned)
        shapes = self._output_row_shapes(want)
        if len(leaves) != len(shapes):
            raise _Refused(f"the code returned {len(leaves)} outputs on a batch, {len(shapes)} one by one")
        pieces = []
        for leaf, shape in zip(leaves, shapes):
            leaf = np.asarray(leaf)
            if not _batched_shape(leaf.shape, b, pad, tuple(shape)):
                raise _Refused(f"{b} rows of shape {(1,) * pad + arr.shape} give an output of shape {leaf.shape}, "
                               f"not ({b}, *{tuple(shape)}) (code that reduces over all axes, transposes or "
                               "indexes the leading axis)")
            pieces.append(leaf.reshape((b,) + tuple(shape)))
        row = tuple(want.shape[1:])
        if len(pieces) == 1 and pieces[0].shape[1:] == row:
            out = pieces[0]
        else:
            out = np.concatenate([p.reshape(b, -1) for p in pieces], axis=1)
            if out.shape[1:] != row:
                raise _Refused(f"outputs of {out.shape[1:]} elements per row, {row} one by one")
        return np.array(out, dtype=want.dtype, copy=True) if self._aliases(out, batch) else \
            out.astype(want.dtype, copy=False)

    def _aliases(self, out: np.ndarray, batch: np.ndarray) -> bool:
        """Whether ``out`` shares memory with the rows or the inputs (the check reuses and perturbs them)."""
        others = list(self.point.values()) + [c for c in getattr(self, "constants", {}).values()
                                              if isinstance(c, np.ndarray)]
        return any(np.may_share_memory(out, a) for a in [batch] + others)

    def _min_rows(self, name: str) -> int:
        """Requests for ``name`` of fewer rows run as a loop: :attr:`batch_min_rows` (JAX: lower once compiled)."""
        return self.batch_min_rows

    def _rows_per_call(self, name: str, given: bool = False) -> int:
        """Rows of one vectorised call: copies of ``point[name]`` within :attr:`batch_input_bytes`
        (:attr:`batch_rows_bytes` for rows the caller ``given``)."""
        size = max(1, self.point[name].size * self.point[name].itemsize)
        cap = self.batch_rows_bytes if given else self.batch_input_bytes
        return int(min(self.batch_max_rows, max(1, cap // size)))

    def _axis_rows_per_call(self, name: str) -> int:
        """Rows of one call along the batch axis: as :meth:`_rows_per_call` (a subclass may bound it further)."""
        return self._rows_per_call(name)

    def _perturbed_rows(self, name: str, idx: np.ndarray, vals: np.ndarray) -> np.ndarray:
        """``len(idx)`` copies of ``point[name]``, row ``b`` with flat element ``idx[b]`` set to ``vals[b]``."""
        arr = self.point[name]
        rows = np.empty((len(idx),) + arr.shape, dtype=arr.dtype)
        rows[...] = arr
        rows.reshape(len(idx), -1)[np.arange(len(idx)), idx] = vals
        return rows

    # -- what a subclass implements -------------------------------------------
    def _vectorised(self, name: str, idx: np.ndarray, vals: np.ndarray) -> np.ndarray:  # pragma: no cover
        """One vectorised call over single-element perturbations: outputs shaped ``(len(idx), *output)``."""
        raise NotImplementedError

    def _vectorised_rows(self, rows: dict[str, np.ndarray]) -> np.ndarray:  # pragma: no cover
        """One vectorised call over whole values of the tensors ``rows`` names (row ``b`` of each together):
        outputs shaped ``(B, *output)``."""
        raise NotImplementedError

    def _batch_axis(self, name: str, rows: np.ndarray, *, owned: bool) -> list:  # pragma: no cover
        """One call of the code with ``point[name]`` replaced by ``rows`` (a leading batch axis, maybe padded).

        Returns the output's floating leaves as numpy arrays, in the order
        ``evaluate`` joins them (their shapes in one evaluation:
        :meth:`_output_row_shapes`). ``owned``: ``rows`` is a fresh array
        the code may write into (otherwise hand it a copy or a read-only
        view).
        """
        raise NotImplementedError

    # -- the loop ----------------------------------------------------------------
    def _loop_batch(self, name: str, idx: np.ndarray, vals: np.ndarray) -> np.ndarray:
        """The perturbations one by one: ``point[name]`` changed in place, ``evaluate()``, restored bit for bit."""
        arr = self.point[name]
        where = arr.reshape(-1) if arr.flags.c_contiguous else arr  # flat indices into a view, else unravelled
        out = None
        for b, (i, v) in enumerate(zip(idx, vals)):
            at = int(i) if where is not arr else np.unravel_index(int(i), arr.shape)
            old = where[at].copy()
            where[at] = v
            try:
                y = np.asarray(self.evaluate())
            finally:
                where[at] = old
            if out is None:
                out = np.empty((len(idx),) + y.shape, dtype=y.dtype)
            out[b] = y
        return out if out is not None else np.zeros((0,))

    def _loop_rows(self, rows: dict[str, np.ndarray]) -> np.ndarray:
        """The rows one by one: each ``point[name]`` overwritten in place, ``evaluate()``, restored bit for bit."""
        saved = {k: self.point[k].copy() for k in rows}
        n = len(next(iter(rows.values())))
        out = None
        try:
            for b in range(n):
                for k, r in rows.items():
                    self.point[k][...] = r[b]
                y = np.asarray(self.evaluate())
                if out is None:
                    out = np.empty((n,) + y.shape, dtype=y.dtype)
                out[b] = y
        finally:
            for k, v in saved.items():
                self.point[k][...] = v
        return out if out is not None else np.zeros((0,))


def _batched_shape(shape: tuple, b: int, pad: int, row: tuple) -> bool:
    """Whether ``shape`` is ``(b, 1 x j, *row)`` for some ``j <= pad`` (padding axes kept by the code)."""
    for j in range(pad + 1):
        if shape == (b,) + (1,) * j + row:
            return True
    return False


def _first_line(exc: BaseException) -> str:
    text = str(exc)
    return f"{type(exc).__name__}: {text.splitlines()[0] if text else ''}"


def rows_disagree(batched: np.ndarray, single: np.ndarray) -> str | None:
    """Why vectorised rows are not the one-by-one outputs, or None when they agree to rounding."""
    batched = np.asarray(batched)
    if batched.shape != single.shape:
        return f"vectorised outputs have shape {batched.shape[1:]}, one-by-one {single.shape[1:]}"
    if np.array_equal(batched, single):  # (the same kernels: bit for bit, the common case; NaN never equals)
        return None
    a = batched.astype(np.float64)
    b = single.astype(np.float64)
    if not np.array_equal(np.isfinite(a), np.isfinite(b)):
        return "vectorised and one-by-one outputs differ in which values are finite"
    fin = np.isfinite(b)
    eps = float(np.finfo(single.dtype if single.dtype.kind == "f" else np.float64).eps)
    axes = tuple(range(1, b.ndim))
    scale = np.max(np.abs(np.where(fin, b, 0.0)), axis=axes, keepdims=True) if b.ndim > 1 else np.abs(b)
    gap = np.abs(np.where(fin, a - b, 0.0))
    if np.any(gap > BATCH_AGREEMENT * eps * np.maximum(scale, np.finfo(np.float64).tiny)) or \
            not np.array_equal(a[~fin], b[~fin], equal_nan=True):
        return (f"vectorised outputs differ from one-by-one evaluations by up to {float(np.max(gap)):.3g} "
                "(random draws, state or value-dependent code?)")
    return None
