"""The streamed comparison (``ComparisonStream``) gives the verdict the whole arrays give, number for number.

Full mode hands the comparison each element's finite difference as it is
settled, in any order, and the stream keeps only the elements a verdict
may turn on. ``_whole_arrays`` below is the comparison rule applied to the
whole arrays at once (the module docstring of :mod:`gradverify.compare`,
as the comparison computed it before it streamed): every result must be
equal to it field for field (``to_dict``: the worst element, its numbers,
the failure and within-noise counts, the kinks named, the largest errors).
"""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gradverify.compare import Comparison, _maxabs, tolerance_for
from gradverify.verdict import CheckResult, InputSummary, Location, Worst


def _whole_arrays(comp, numeric, error=None, *, kinks=None, sensitivity=None, flat_scale=0.0, kink_slack=None):
    """The rule on whole arrays (every temporary the tensors' size): the oracle the stream must match."""
    t = comp.tol
    scales = {k: _maxabs(np.asarray(numeric[k])) for k in comp.analytic}
    glob = max(scales.values(), default=0.0)
    if glob == 0.0 and flat_scale:
        glob = flat_scale / t.cross if t.cross else 0.0
    failures, best, summaries, locations, weak, unverified, first_lost = 0, None, [], [], 0, 0, None
    for name, a in comp.analytic.items():
        n = np.asarray(numeric[name], dtype=np.float64)
        e = np.zeros_like(n) if error is None else np.asarray(error[name], dtype=np.float64)
        lost = ~np.isfinite(e)
        if lost.any():
            unverified += int(np.count_nonzero(lost))
            if first_lost is None:
                first_lost = (name, tuple(int(i) for i in np.argwhere(lost)[0]))
            n = np.where(lost, a.astype(np.float64), n)
            e = np.where(lost, 0.0, e)
        a64 = a.astype(np.float64)
        gap = np.abs(a64 - n)
        sens = 0.0 if sensitivity is None else np.asarray(sensitivity[name], dtype=np.float64)
        tb = comp.base_tolerance(name, n, scales[name], glob, sens)
        tol = tb + t.noise_factor * e
        ok = gap <= tol
        kink_mask = np.zeros(a.shape, dtype=bool)
        if kinks and name in kinks:
            mask, left, right = kinks[name]
            jump = np.abs(right - left)
            tk = tb if kink_slack is None or name not in kink_slack else np.maximum(tb, kink_slack[name])
            kink_mask = mask & (jump > tk)
            lo = np.minimum(left, right) - tk
            hi = np.maximum(left, right) + tk
            inside = (a64 >= lo) & (a64 <= hi)
            for idx in map(tuple, np.argwhere(kink_mask)):
                locations.append(Location(name, tuple(int(i) for i in idx), float(left[idx]), float(right[idx]),
                                          float(a64[idx])))
            nearest = np.where(np.abs(a64 - left) < np.abs(a64 - right), left, right)
            n = np.where(kink_mask, nearest, n)
            gap = np.where(kink_mask, np.abs(a64 - n), gap)
            ok = np.where(kink_mask, inside, ok)
            tol = np.where(kink_mask & inside, np.maximum(tol, gap), tol)
        with np.errstate(divide="ignore", invalid="ignore"):
            denom = np.maximum(np.abs(n), t.floor * scales[name])
            rel = np.where(gap == 0, 0.0, np.where(denom > 0, gap / denom, np.inf))
            ratio = np.where(gap == 0, 0.0, np.where(tol > 0, gap / tol, np.inf))
        nbad = int(np.count_nonzero(~ok))
        failures += nbad
        weak += int(np.count_nonzero(ok & (gap > tb) & ~kink_mask))
        summaries.append(InputSummary(name, tuple(a.shape), a.dtype.name, True, nbad,
                                      float(gap.max()) if gap.size else 0.0, float(rel.max()) if rel.size else 0.0))
        if a.size:
            flat = int(np.argmax(ratio))
            idx = tuple(int(i) for i in np.unravel_index(flat, a.shape))
            w = Worst(name, idx, float(a64[idx]), float(n[idx]), float(gap[idx]), float(rel[idx]), float(tol[idx]),
                      float(e[idx]))
            if best is None or float(ratio[idx]) > best[0]:
                best = (float(ratio[idx]), w)
    msgs = []
    if weak:
        msgs.append(f"{weak} element(s) agreed only within the reference's estimated noise; "
                    "their verdict is weaker than the tolerance suggests")
    if unverified:
        msgs.append(f"{unverified} element(s) could not be verified (first: {first_lost[0]!r}{list(first_lost[1])}): "
                    "finite differences did not converge at any step down to the resolution of the storage, so the "
                    "function varies faster there than differences can follow")
    status = "fail" if failures else ("nondiff" if locations else "pass")
    return CheckResult(passed=status != "fail", status=status, kind="function", worst=None if best is None else best[1],
                       failures=failures, inputs=tuple(summaries), nondifferentiable=tuple(locations),
                       warnings=tuple(msgs), reference="fd", tolerance=t.to_dict())


def _case(seed: int, shapes, *, fail: float, lost: float, kinky: float, nonfinite: bool, quantized: bool,
          zeros: float, sensitivity: bool, slack: bool, dtype):
    """Gradients under test and a reference with what a verdict turns on: ties, zeros, kinks, failures, NaN."""
    rng = np.random.default_rng(seed)
    analytic, numeric, error, sens, kinks, slacks = {}, {}, {}, {}, {}, {}
    for k, shape in enumerate(shapes):
        name, size = f"t{k}", int(np.prod(shape))
        scale = 10.0 ** rng.integers(-6, 7)  # tensors of scales far apart: S (the largest) matters to the small
        n = rng.standard_normal(size) * scale * 10.0 ** rng.integers(-8, 1, size=size)
        if quantized:
            n = np.round(n * 8) / 8 + scale
        n[rng.random(size) < zeros] = 0.0
        noise = (rng.standard_normal(size) * scale * 10.0 ** rng.integers(-13, -3, size=size)
                 if not quantized else np.spacing(np.abs(n)) * rng.integers(-2, 3, size=size))
        a = n + noise
        a[rng.random(size) < zeros / 2] = 0.0
        a[rng.random(size) < fail] += scale * rng.standard_normal() * 1e-3
        e = np.abs(rng.standard_normal(size)) * scale * 10.0 ** rng.integers(-14, -4, size=size)
        e[rng.random(size) < 0.1] = 0.0
        e[rng.random(size) < lost] = np.inf
        if nonfinite and size:
            n[rng.integers(0, size)] = rng.choice([np.nan, np.inf])
            e[rng.integers(0, size)] = np.nan
        analytic[name] = a.astype(dtype).reshape(shape)
        if len(shape) == 2 and seed % 2:
            analytic[name] = np.asfortranarray(analytic[name])  # (not C-contiguous: read by index, not reshaped)
        numeric[name], error[name] = n.reshape(shape), e.reshape(shape)
        sens[name] = (np.abs(rng.standard_normal(size)) * scale * 10.0 ** rng.integers(-2, 8, size=size)).reshape(shape)
        mask = rng.random(size) < kinky
        if mask.any():
            side = np.abs(rng.standard_normal(size)) * scale * 10.0 ** rng.integers(-12, 0, size=size)
            left = np.where(mask, n - side * rng.random(size), np.nan)
            right = np.where(mask, n + side * rng.random(size), np.nan)
            kinks[name] = (mask.reshape(shape), left.reshape(shape), right.reshape(shape))
            slacks[name] = (np.abs(rng.standard_normal(size)) * scale
                            * 10.0 ** rng.integers(-12, -2, size=size)).reshape(shape)
    return (analytic, numeric, error, sens if sensitivity else None, kinks or None,
            slacks if slack and kinks else None)


def _streamed(comp, numeric, error, kinks, sens, slack, rng, dense=None):
    """The stream fed in a random order, in batches of random sizes, as full mode feeds it.

    ``dense``: the stream's :attr:`~ComparisonStream.dense_elements` (0: every batch sifted as it comes; a few:
    held, then sifted from a batch on; the default: a small check judged whole).
    """
    stream = comp.stream(sensitivity=sens is not None, kink_slack=slack is not None, dense_elements=dense)
    for name, a in comp.analytic.items():
        order = rng.permutation(a.size)
        cuts = np.sort(rng.choice(np.arange(1, max(a.size, 2)), size=min(4, max(a.size - 1, 0)), replace=False))
        for part in np.split(order, cuts):
            kw = {}
            if kinks and name in kinks:
                m, lft, rgt = (np.asarray(x).reshape(-1)[part] for x in kinks[name])
                kw = dict(kink=m, left=lft, right=rgt,
                          slack=None if slack is None or name not in slack else slack[name].reshape(-1)[part])
            stream.add(name, part, numeric[name].reshape(-1)[part], error[name].reshape(-1)[part],
                       None if sens is None else sens[name].reshape(-1)[part], **kw)
        stream.done(name)
    return stream.result(kind="function", reference="fd")


shapes = st.lists(st.sampled_from([(), (0,), (1,), (7,), (3, 5), (40, 30), (257,)]), min_size=1, max_size=3)


@settings(max_examples=150)
@given(seed=st.integers(0, 2**32 - 1), shapes=shapes, fail=st.sampled_from([0.0, 0.01, 1.0]),
       lost=st.sampled_from([0.0, 0.05]), kinky=st.sampled_from([0.0, 0.05, 0.5]), nonfinite=st.booleans(),
       quantized=st.booleans(), zeros=st.sampled_from([0.0, 0.2, 1.0]), sensitivity=st.booleans(),
       slack=st.booleans(), dtype=st.sampled_from([np.float64, np.float32]), flat=st.booleans(),
       dense=st.sampled_from([0, 1, 50, None]))
def test_the_streamed_verdict_is_the_verdict_of_the_whole_arrays(seed, shapes, fail, lost, kinky, nonfinite,
                                                                 quantized, zeros, sensitivity, slack, dtype, flat,
                                                                 dense):
    analytic, numeric, error, sens, kinks, slacks = _case(
        seed, shapes, fail=fail, lost=lost, kinky=kinky, nonfinite=nonfinite, quantized=quantized, zeros=zeros,
        sensitivity=sensitivity, slack=slack, dtype=dtype)
    comp = Comparison(analytic, tolerance_for(dtype))
    flat_scale = 1e-12 if flat else 0.0
    with np.errstate(all="ignore"):
        want = _whole_arrays(comp, numeric, error, kinks=kinks, sensitivity=sens, flat_scale=flat_scale,
                             kink_slack=slacks).to_dict()
        got = comp.result(numeric, error, kind="function", reference="fd", kinks=kinks, sensitivity=sens,
                          flat_scale=flat_scale, kink_slack=slacks).to_dict()
        assert got == want  # Comparison.result streams the whole arrays in index order
        if not flat:
            got = _streamed(comp, numeric, error, kinks, sens, slacks, np.random.default_rng(seed), dense).to_dict()
            assert got == want  # ...and any order, any batches, sifted, held or held then sifted: the same verdict


def test_where_every_gap_is_zero_the_worst_is_the_first_element():
    a = {"x": np.arange(6.0).reshape(2, 3), "y": np.ones(4)}
    r = Comparison(a, tolerance_for(np.float64)).result({k: v.copy() for k, v in a.items()}, kind="function")
    assert r.worst.input == "x" and r.worst.index == (0, 0) and r.worst.abs_err == 0.0  # as argmax of zeros has it


@pytest.mark.parametrize("dense", [0, None])
def test_equal_ratios_name_the_first_element_whichever_arrived_first(dense):
    n = np.ones(1000)
    a = n.copy()
    a[[100, 500, 900]] += 1e-3  # three identical failures
    comp = Comparison({"w": a}, tolerance_for(np.float64))
    stream = comp.stream(dense_elements=dense)  # sifted, or (1000 elements) held and judged whole
    for part in np.array_split(np.arange(1000)[::-1], 7):  # the later elements first
        stream.add("w", part, n[part])
    stream.done("w")
    r = stream.result(kind="function")
    assert r.failures == 3 and r.worst.index == (100,)


def test_a_passing_tensor_leaves_a_handful_of_elements_held():
    rng = np.random.default_rng(0)
    n = rng.standard_normal(200_000)
    a = n * (1 + 1e-9 * rng.standard_normal(n.size))  # right to rounding and truncation
    comp = Comparison({"w": a}, tolerance_for(np.float64))
    stream = comp.stream()
    for i in range(0, n.size, 4096):
        stream.add("w", np.arange(i, min(i + 4096, n.size)), n[i:i + 4096], np.full(min(4096, n.size - i), 1e-10))
    stream.done("w")
    t = stream.tensors["w"]
    held = t.must.count + t.worst.count + t.rel.count
    # the elements a verdict may turn on: those whose gap exceeds the base tolerance at S_T = 0 (a gradient
    # within 1e-9 of a value below 1e-4 of the largest, about 1e-4 of them), and the few candidates for the
    # worst ratio and the largest relative error: far fewer than the 200,000 elements
    assert held < 500, (t.must.count, t.worst.count, t.rel.count)
    assert stream.held is None  # (past dense_elements: sifted)
    assert stream.result(kind="function").passed


def test_a_small_check_is_held_whole_and_a_larger_one_sifted_from_where_it_outgrew_that():
    rng = np.random.default_rng(1)
    n = rng.standard_normal(600)
    a = n.copy()
    a[37] += 1e-3
    comp = Comparison({"w": a}, tolerance_for(np.float64))
    want = comp.result({"w": n}, kind="function").to_dict()
    for dense, held in ((1000, True), (250, False)):
        stream = comp.stream(dense_elements=dense)
        for part in np.array_split(rng.permutation(600), 5):
            values = n[part]  # a buffer the caller reuses: the stream must not keep a view of it
            stream.add("w", part, values)
            values[:] = np.nan
        assert (stream.held is not None) == held
        stream.done("w")
        assert stream.result(kind="function").to_dict() == want


class _Recorder:
    """A sink keeping every record ``projected_gradients`` hands over (to compare with its whole arrays)."""

    def __init__(self):
        self.seen, self.finished = {}, []

    def add(self, name, idx, value, error, sensitivity, *, kink=None, left=None, right=None, slack=None):
        k = np.zeros(len(idx), dtype=bool) if kink is None else np.asarray(kink)
        for j, i in enumerate(np.asarray(idx).tolist()):
            assert (name, i) not in self.seen  # every element once
            self.seen[name, i] = (value[j], error[j], sensitivity[j], bool(k[j]),
                                  left[j] if k[j] else None, right[j] if k[j] else None, slack[j] if k[j] else None)

    def done(self, name):
        self.finished.append(name)


def _kinky(batched: bool):
    """tanh(x W) plus |x| and a relu kink at exactly 0 (kinks named), a +inf coordinate (taken as 0), a judge."""
    from gradverify.compare import Comparison

    rng = np.random.default_rng(3)
    x = rng.standard_normal((3, 40))
    x[0, :5] = 0.0  # |x| and relu(x) at their kinks
    W = rng.standard_normal((40, 30)) / 6
    b = rng.standard_normal(7)
    b[2] = np.inf  # does not move under a perturbation
    u = rng.standard_normal((3, 30 + 40 + 7))
    point = {"x": x, "W": W, "b": b}

    def f(x, W, b):
        return np.concatenate([np.tanh(x @ W), np.abs(x) + np.maximum(x, 0)[:1], np.where(np.isfinite(b), b, 0.0)[
            None].repeat(3, 0) * 0.5], axis=1)

    def evaluate():
        return f(point["x"], point["W"], point["b"])

    def evaluate_batch(name, flat, values):
        rows = []
        for i, v in zip(flat, values):
            p = {k: a.copy() for k, a in point.items()}
            p[name].reshape(-1)[i] = v
            rows.append(f(p["x"], p["W"], p["b"]))
        return np.stack(rows)

    d = 1e-9
    grads = {"x": rng.standard_normal(x.shape) * d, "W": rng.standard_normal(W.shape) * d, "b": np.zeros(7)}
    comp = Comparison(grads, tolerance_for(np.float64))
    kw = dict(judge=comp.judge, judge_many=comp.judge_many, tolerance=comp.base_tolerance,
              evaluate_batch=evaluate_batch if batched else None, batch_bytes=8 * u.size * 4 * 37)
    return evaluate, point, u, kw


def test_a_sink_receives_the_numbers_the_whole_arrays_hold():
    """``projected_gradients(sink=...)``: every element once, the same value, error, sensitivity and kink."""
    from gradverify.references.elementwise import projected_gradients

    for batched in (False, True):
        evaluate, point, u, kw = _kinky(batched)
        before = {k: v.copy() for k, v in point.items()}
        whole, n_whole = projected_gradients(evaluate, point, u, **kw)
        rec = _Recorder()
        none, n_sunk = projected_gradients(evaluate, point, u, sink=rec, **kw)
        assert none == {} and n_sunk == n_whole and rec.finished == list(point)
        assert all(np.array_equal(point[k], before[k]) for k in point)
        kinks = 0
        for name, d in whole.items():
            for i in range(d.value.size):
                v, e, s, k, left, right, slack = rec.seen[name, i]
                assert (v, e, s, k) == (d.value.flat[i], d.error.flat[i], d.sensitivity.flat[i], d.kink.flat[i]), \
                    (batched, name, i)
                if k:
                    kinks += 1
                    assert (left, right, slack) == (d.left.flat[i], d.right.flat[i], d.side_error.flat[i])
        assert len(rec.seen) == sum(a.size for a in point.values())
        assert kinks >= 5  # the kinks at x = 0 were diagnosed, and handed over with their sides


def test_the_screen_samples_the_elements_it_always_sampled():
    """The sample is drawn from a permutation of narrow integers: the positions ``permutation`` gives."""
    from gradverify.references.elementwise import _sample_positions
    from gradverify.references.screen import SCREEN_SAMPLES

    for n in (64, 100, 255, 256, 257, 40_000, 65_536, 65_537, 300_007):
        want = np.sort(np.random.default_rng(n).permutation(n)[:SCREEN_SAMPLES])
        assert np.array_equal(_sample_positions(n), want), n


@pytest.mark.parametrize("bug", [0.0, 1e-4], ids=["right", "one element wrong"])
def test_a_full_check_gives_the_same_verdict_sifted_or_judged_whole(monkeypatch, bug):
    # The whole pipeline (screen, Richardson, kinks at exact zeros of relu and |x|, the float64 comparison)
    # on 1,620 elements: ComparisonStream sifting from the first element, and holding everything to judge the
    # whole arrays, must agree number for number (the verdict's fields but its timing).
    import gradverify as gv
    from gradverify.compare import ComparisonStream

    rng = np.random.default_rng(5)
    x = rng.standard_normal((6, 30))
    x[0, :4] = 0.0
    w = rng.standard_normal((30, 48)) / 5

    def f(x, w):
        return np.tanh(x @ w) + np.abs(x).sum(1, keepdims=True) + np.maximum(x, 0)[:, :1]

    def vjp(dy, x, w):
        t = np.tanh(x @ w)
        d = dy * (1 - t * t)
        gx = d @ w.T + np.sign(x) * dy.sum(1, keepdims=True)
        gx[:, 0] += (x[:, 0] > 0) * dy.sum(1)
        gw = x.T @ d
        gw[7, 11] *= 1 + bug
        return gx, gw

    got = {}
    for dense in (0, 10**9):
        monkeypatch.setattr(ComparisonStream, "dense_elements", dense)
        r = gv.check(f, [x, w], vjp=vjp, mode="full", against="fd", seed=1, budget=1e9)
        d = r.to_dict()
        d.pop("seconds", None)
        got[dense] = d
    assert got[0] == got[10**9]
    assert got[0]["passed"] == (bug == 0.0), got[0]
    if bug:
        assert got[0]["failures"] == 1 and got[0]["worst"]["input"] == "w", got[0]
        assert tuple(got[0]["worst"]["index"]) == (7, 11), got[0]
    assert got[0]["nondifferentiable"], got[0]  # the kinks at the exact zeros are named either way
