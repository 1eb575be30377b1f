"""Memory a check allocates, counted by tracemalloc (bytes, never time).

numpy allocations are traced by tracemalloc, so a numpy function with a
``vjp=`` shows what the check itself holds: the gradient under test, and
what each finite-difference stage adds on top, above the bytes held before
the call (the caller's inputs). Size: a 0.7 MiB input (``W`` 300 x 300
and ``x`` 8 x 300), ``W`` over the size above which fast mode stops
holding its probe directions (:data:`gradverify.api.KEEP_DIRECTION_BYTES`);
full mode, which evaluates every element, at 0.32 MiB (``W`` 200 x 200,
:data:`FULL_N`). ``benchmarks/memory.py`` prints the same peaks per stage
and per path.
"""

from __future__ import annotations

import tracemalloc

import numpy as np
import pytest

import gradverify as gv
from gradverify import api
from gradverify.references import noise as noise_mod


def _f(x, w):
    return np.tanh(x @ w)


def _vjp(dy, x, w):
    d = dy * (1 - np.tanh(x @ w) ** 2)
    return d @ w.T, x.T @ d


def _inputs(n=300):
    rng = np.random.default_rng(0)
    return [rng.standard_normal((8, n)), rng.standard_normal((n, n)) / np.sqrt(n)]


@pytest.fixture
def traced():
    tracemalloc.start()
    yield
    tracemalloc.stop()


def _stage_peaks(monkeypatch, owner, names, base):
    """Per stage: (bytes held when it starts, peak bytes while it runs), both above ``base``.

    ``seen["check"]`` (once :func:`_whole` ran) is the whole check's peak:
    ``tracemalloc.reset_peak`` is global, so each stage's wrapper carries
    the peak so far over to the stages (and the check) around it.
    """
    seen, active = {}, []
    for name in names:
        original = getattr(owner, name)

        def wrapped(*a, _original=original, _name=name, **k):
            high = tracemalloc.get_traced_memory()[1]
            for frame in active:
                frame[1] = max(frame[1], high)
            tracemalloc.reset_peak()
            start = tracemalloc.get_traced_memory()[0]
            frame = [_name, start]
            active.append(frame)
            try:
                return _original(*a, **k)
            finally:
                active.remove(frame)
                frame[1] = max(frame[1], tracemalloc.get_traced_memory()[1])
                for outer in active:
                    outer[1] = max(outer[1], frame[1])
                seen[_name] = (start - base, max(seen.get(_name, (0, 0))[1], frame[1] - base))

        monkeypatch.setattr(owner, name, wrapped)
    seen["_active"] = active
    return seen


def _whole(stages, run, base):
    """Run ``run()``; the peak bytes above ``base`` while it ran, the stages' peaks included."""
    active = stages.pop("_active")
    frame = ["check", base]
    tracemalloc.reset_peak()
    active.append(frame)
    try:
        out = run()
    finally:
        active.remove(frame)
    return out, max(frame[1], tracemalloc.get_traced_memory()[1]) - base


def _warm(fn, vjp, mode):
    xs = _inputs()
    gv.check(fn, [xs[0][:, :4].copy(), xs[1][:4, :4].copy()], vjp=vjp, mode=mode, against="fd")  # imports, caches


def test_a_fast_check_allocates_a_few_copies_of_its_inputs(traced, monkeypatch):
    xs = _inputs()
    size = sum(a.nbytes for a in xs)
    assert all(a.nbytes > api.KEEP_DIRECTION_BYTES for a in xs[1:])
    kept = [a.copy() for a in xs]
    _warm(_f, _vjp, "fast")
    base = tracemalloc.get_traced_memory()[0]
    stages = _stage_peaks(monkeypatch, api, ["_first_evaluation", "_analytic_pass", "_fast", "function_noise"], base)
    r, peak = _whole(stages, lambda: gv.check(_f, xs, vjp=_vjp, mode="fast", against="fd"), base)
    assert r.passed and r.mode == "fast"
    assert all(np.array_equal(a, b) for a, b in zip(xs, kept))  # the caller's arrays untouched
    # The finite-difference stages add at most about 3 copies of the inputs to what the check holds
    # when they start (the gradient under test): the saved point, chunks of a direction, the views each
    # call of the code gets. (Before: 16 displaced points and 4 probe directions at once, ~38x.)
    for name, (start, high) in stages.items():
        assert high - start < 3.5 * size, (name, (high - start) / size)
    # The whole check, above what the caller held (its inputs): the gradient under test (1x), one saved
    # copy of the tensor being probed (1x; the caller's float64 arrays are perturbed in place, not copied,
    # and the code gets read-only views once the mutation probe showed it writes nothing) and chunks of a
    # 64th of a tensor: about 2.4x. (Before: 7.5x -- a float64 copy of the inputs, a copy per call, a
    # held direction, the noise table's direction, whole-array comparisons.)
    assert peak < 3 * size, peak / size


def _vjp_bug(dy, x, w):
    dx, dw = _vjp(dy, x, w)
    dw[1, 2] += 0.5  # a planted bug in one element (dw is the vjp's own new array)
    return dx, dw


def test_a_failing_fast_check_bisects_within_three_copies(traced, monkeypatch):
    xs = _inputs()
    size = sum(a.nbytes for a in xs)
    kept = [a.copy() for a in xs]
    _warm(_f, _vjp_bug, "fast")
    base = tracemalloc.get_traced_memory()[0]
    stages = _stage_peaks(monkeypatch, api, ["_fast", "projected_gradients"], base)
    r, peak = _whole(stages, lambda: gv.check(_f, xs, vjp=_vjp_bug, mode="fast", against="fd"), base)
    assert not r.passed and r.worst.input == "w" and r.worst.index == (1, 2)  # confirmed, bisected, located
    assert all(np.array_equal(a, b) for a, b in zip(xs, kept))
    # Bisection reads halves of the probe as index ranges (never dense: before, three dense arrays per
    # level) and the located element's finite differences hold that one element (before: eight arrays
    # the tensor's size): the whole check stays under 3x, as when it passes.
    assert peak < 3 * size, peak / size


_drop = np.random.default_rng(5)


def _f_random(x, w):
    mask = _drop.random((x.shape[0], w.shape[1])) < 0.9  # dropout: replayed for every call
    return np.tanh(x @ w) * mask


def _vjp_random(dy, x, w):
    mask = _drop.random((x.shape[0], w.shape[1])) < 0.9
    return _vjp(dy * mask, x, w)


def test_a_check_replaying_random_draws_stays_within_three_copies(traced, monkeypatch):
    xs = _inputs()
    size = sum(a.nbytes for a in xs)
    _warm(_f_random, _vjp_random, "fast")
    base = tracemalloc.get_traced_memory()[0]
    stages = _stage_peaks(monkeypatch, api, ["_fast"], base)
    r, peak = _whole(stages, lambda: gv.check(_f_random, xs, vjp=_vjp_random, mode="fast", against="fd"), base)
    assert r.passed and any("random" in w for w in r.warnings)
    # RNG replay holds the generators' states (bytes), not arrays: the same bound as without it
    assert peak < 3 * size, peak / size


def _f_writes(x, w):
    np.tanh(x, out=x)  # writes into its (small) input x
    return np.tanh(x @ w)


def _vjp_writes(dy, x, w):
    dz = dy * (1 - np.tanh(np.tanh(x) @ w) ** 2)
    return (dz @ w.T) * (1 - np.tanh(x) ** 2), np.tanh(x).T @ dz


def test_a_function_writing_into_an_input_gets_copies_of_that_input_only(traced, monkeypatch):
    xs = _inputs()
    size = sum(a.nbytes for a in xs)
    kept = [a.copy() for a in xs]
    _warm(_f_writes, _vjp_writes, "fast")
    base = tracemalloc.get_traced_memory()[0]
    stages = _stage_peaks(monkeypatch, api, ["_first_evaluation"], base)
    r, peak = _whole(stages, lambda: gv.check(_f_writes, xs, vjp=_vjp_writes, mode="fast", against="fd"), base)
    assert r.passed and any("modifies its inputs in place" in w for w in r.warnings)
    assert all(np.array_equal(a, b) for a, b in zip(xs, kept))
    # The mutation probe runs the function on copies (1x) and compares them with the inputs a chunk at a
    # time; later calls copy x (which it writes) and view w: under 3x like a function that writes nothing
    assert stages["_first_evaluation"][1] < 1.5 * size, stages["_first_evaluation"][1] / size
    assert peak < 3 * size, peak / size


#: Full mode's inputs: W 200 x 200 and x 8 x 200 (0.32 MiB, 41,600 elements). Below about this size the stages
#: full mode shares with fast mode -- the backward's mutation probe (copies of the inputs, compared with them in
#: chunks of 8192 elements), the noise table -- hold chunks of a fixed size that alone approach the 3x
#: (at 84 KiB the analytic pass reaches 4.8x, the noise table 5.3x); above it, more elements only cost time.
FULL_N = 200


def test_a_full_check_stays_within_three_copies_of_its_inputs(traced, monkeypatch):
    xs = _inputs(FULL_N)
    size = sum(a.nbytes for a in xs)
    kept = [a.copy() for a in xs]
    _warm(_f, _vjp, "full")
    base = tracemalloc.get_traced_memory()[0]
    stages = _stage_peaks(monkeypatch, api, ["_first_evaluation", "_analytic_pass", "_fd_verdict"], base)
    r, peak = _whole(stages, lambda: gv.check(_f, xs, vjp=_vjp, mode="full", against="fd", budget=1e9), base)
    assert r.passed and r.mode == "full" and r.evaluations > 2 * sum(a.size for a in xs)  # every element
    assert all(np.array_equal(a, b) for a, b in zip(xs, kept))
    # What full mode adds to what the check holds when it starts (the gradient under test): each element's
    # finite difference goes to the comparison as it settles, and the comparison keeps only the elements a
    # verdict may turn on (a handful here); what remains is a random permutation of W's flat indices while
    # the screen draws its sample (uint16: 0.25x), a part of a tensor's screen arrays, and batches of rows and
    # outputs (numpy code along its batch axis: FunctionTarget.batch_output_bytes, 64 KiB here), or the rows a
    # step walk compares (4% of the inputs each): about 1.3x. (Before: value, error, both
    # one-sided slopes, sensitivity, side error, scale and first step per element, then a dozen comparison
    # arrays per element, twice where a float64 run of the code exists: about 17x.)
    start, high = stages["_fd_verdict"]
    assert high - start < 1.5 * size, (high - start) / size
    # The whole check, above the caller's inputs: 2.7x, set by the analytic pass (the gradient under test, the
    # copies of the inputs its first call gets for the backward's mutation probe, its second run)
    assert peak < 3 * size, peak / size


def test_a_failing_full_check_and_its_second_opinion_stay_near_three_copies(traced, monkeypatch):
    xs = _inputs(FULL_N)
    size = sum(a.nbytes for a in xs)
    _warm(_f, _vjp_bug, "full")
    base = tracemalloc.get_traced_memory()[0]
    stages = _stage_peaks(monkeypatch, api, ["_analytic_pass", "projected_gradients", "_second_opinion",
                                             "function_noise"], base)
    r, peak = _whole(stages, lambda: gv.check(_f, xs, vjp=_vjp_bug, mode="full", against="fd", budget=1e9), base)
    assert not r.passed and r.failures == 1 and r.worst.input == "w" and r.worst.index == (1, 2)
    assert r.mode == "full" and r.taylor is not None and "'w'[1, 2]" in r.taylor["where"]  # the second opinion ran
    # The finite differences of every element, the failing one walked down its steps: as when it passes
    start, high = stages["projected_gradients"]
    assert high - start < 1.5 * size, (high - start) / size
    # The Taylor second opinion moves one element (a UnitDirection): nothing the size of the tensor, only
    # arrays the size of the output (the outputs it compares, the cotangent's magnitudes: fewer than 12)
    start, high = stages["_second_opinion"]
    out_bytes = _f(*xs).nbytes
    assert high - start < 12 * out_bytes, (high - start) / out_bytes
    for name in ("_analytic_pass", "projected_gradients", "_second_opinion"):
        assert stages[name][1] < 3 * size, (name, stages[name][1] / size)
    # The whole check: 3.07x, the residual set by the noise table that a failing full verdict measures (a
    # saved copy of the point and chunks of at least 8192 elements: 1.6x above what the check holds then, the
    # gradient under test and the outputs, 1.4x; references/noise.py, whose own test holds it at a larger size)
    assert stages["function_noise"][1] - stages["function_noise"][0] < 2 * size
    assert peak < 3.25 * size, peak / size


@pytest.mark.parametrize("fn, jac, extra", [
    (_f_random, _vjp_random, "random"),  # RNG replay: the generators' states restored before every call
    (_f_writes, _vjp_writes, "modifies its inputs in place"),  # the mutation probe found the write: x copied
], ids=["rng-replay", "writes-its-input"])
def test_a_full_check_replaying_draws_or_copying_a_written_input_adds_no_copy_of_the_inputs(
        traced, monkeypatch, fn, jac, extra):
    # Against the same check of the plain function: a full check at a small size (60 x 60, fast to run; the
    # difference does not grow with the size's fixed costs, which both checks share)
    xs = _inputs(60)
    size = sum(a.nbytes for a in xs)
    peaks = []
    for f, v in ((_f, _vjp), (fn, jac)):
        _warm(f, v, "full")
        base = tracemalloc.get_traced_memory()[0]
        r, peak = _whole({"_active": []}, lambda: gv.check(f, [a.copy() for a in xs], vjp=v, mode="full",
                                                           against="fd", budget=1e9), base)
        assert r.passed and r.mode == "full"
        peaks.append(peak - 2 * size)  # (the copies handed in, held by the call)
    assert any(extra in w for w in r.warnings), r.warnings
    # RNG replay holds generator states (bytes); a written input x (8 x 60, 6% of the inputs) is copied for
    # each call: under a quarter of the inputs more than the plain function's check, whatever its size
    assert peaks[1] - peaks[0] < 0.25 * size, (peaks[1] - peaks[0]) / size


def test_the_noise_table_holds_no_temporaries_the_size_of_the_point(traced):
    xs = _inputs()
    point = {"x": xs[0].copy(), "w": xs[1].copy()}
    size = sum(a.nbytes for a in xs)
    y = _f(*xs)
    u = np.random.default_rng(1).standard_normal(y.shape)
    before = {k: v.copy() for k, v in point.items()}
    base = tracemalloc.get_traced_memory()[0]
    tracemalloc.reset_peak()
    nz = noise_mod.function_noise(lambda: _f(point["x"].copy(), point["w"].copy()), point, u,
                                  rng=np.random.default_rng(2))
    added = tracemalloc.get_traced_memory()[1] - base
    assert nz.evaluations >= 9
    assert all(np.array_equal(point[k], before[k]) for k in point)  # restored bit for bit
    # the saved point, int8 signs, chunks of the direction, and the copies the evaluation makes
    # (before: the direction was held whole too, and the signs drawn as float64 first)
    assert added < 2.5 * size, added / size


def test_a_write_the_mutation_probe_did_not_see_reruns_on_copies_and_warns():
    calls = []

    def f(x, w):
        calls.append(x.flags.writeable)
        if len(calls) == 5:
            x[0, 0] += 1.0  # a write on one later call only: the read-only view refuses it
        return np.tanh(x @ w)

    xs = _inputs(20)
    kept = [a.copy() for a in xs]
    r = gv.check(f, xs, vjp=_vjp, mode="fast", against="fd")
    assert r.passed  # the call that wrote ran again on copies: the check saw the function, not the write
    assert not all(calls[2:])  # read-only views after the mutation probe (call 2)...
    assert calls[-1]  # ...and copies once a call wrote
    assert any("raised on read-only views of its inputs (ValueError: assignment destination is read-only)" in w
               and "ran again on writable copies" in w for w in r.warnings), r.warnings
    assert all(np.array_equal(a, b) for a, b in zip(xs, kept))  # the caller's arrays bit for bit


def test_the_same_array_passed_twice_is_perturbed_apart():
    x = np.random.default_rng(3).standard_normal((4, 5))

    def f(a, b):
        return a * np.sin(b)

    def vjp(dy, a, b):
        return dy * np.sin(b), dy * a * np.cos(b)

    kept = x.copy()
    r = gv.check(f, [x, x], vjp=vjp, mode="full", against="fd")
    assert r.passed  # had both names shared one array, each derivative would be the sum of both
    assert np.array_equal(x, kept)


def test_the_callers_arrays_come_back_bit_for_bit_when_the_code_raises_mid_check():
    calls = []

    def f(x, w):
        calls.append(1)
        if len(calls) >= 12:  # inside the noise table or a probe: the point is displaced now
            raise RuntimeError("boom")
        return np.tanh(x @ w)

    xs = _inputs(20)
    kept = [a.copy() for a in xs]
    with pytest.raises(gv.CodeUnderTestError):
        gv.check(f, xs, vjp=_vjp, mode="fast", against="fd")
    assert all(np.array_equal(a, b) for a, b in zip(xs, kept))


@pytest.fixture
def little_memory(monkeypatch):
    """The machine says only this many bytes are available (nothing is allocated to find out)."""
    from gradverify import memory

    def set_available(n):
        monkeypatch.setattr(memory, "available_bytes", lambda: n)

    return set_available


def memory_share(available: int) -> float:
    """What a check may take of ``available`` bytes."""
    from gradverify import memory

    return memory.SAFETY * available


def test_a_full_check_that_would_not_fit_says_how_much_it_needs(little_memory):
    xs = _inputs(20)
    # the full check of 560 elements may need 27 kB (FULL_BYTES_PER_ELEMENT: 6 numbers each where every element
    # fails), more than half of what is available
    little_memory(40_000)
    assert api.FULL_BYTES_PER_ELEMENT * 560 > memory_share(40_000)
    with pytest.raises(gv.InsufficientMemory, match=r"a full check of 560 elements needs about .* MiB.*mode=.fast."):
        gv.check(_f, xs, vjp=_vjp, mode="full", against="fd")


def test_auto_mode_falls_back_to_fast_where_a_full_check_would_not_fit(little_memory):
    xs = _inputs(20)
    little_memory(40_000)
    r = gv.check(_f, xs, vjp=_vjp, mode="auto", against="fd", budget=1e9)
    assert r.passed and r.mode == "fast"
    assert any("needs about" in w and "memory" in w for w in r.warnings)
    little_memory(2**40)
    assert gv.check(_f, xs, vjp=_vjp, mode="auto", against="fd", budget=1e9).mode == "full"


def test_a_fast_check_that_cannot_save_its_largest_tensor_refuses_before_allocating(little_memory):
    xs = _inputs(20)
    little_memory(1000)  # less than a copy of w (3200 bytes) at the 50% safety share
    with pytest.raises(gv.InsufficientMemory, match="fast mode .* needs about"):
        gv.check(_f, xs, vjp=_vjp, mode="fast", against="fd")


def test_stage_budgets_shrink_with_the_memory_available(little_memory):
    from gradverify import memory

    little_memory(10 * 2**20)
    assert memory.budget(64 * 2**20) == int(memory.SAFETY * 10 * 2**20)  # smaller chunks, not an error
    assert memory.budget(2**20) == 2**20
    assert api._rows_budget(2**30) == int(memory.SAFETY * 10 * 2**20)
    with pytest.raises(gv.InsufficientMemory, match="needs about 8 MiB"):
        memory.budget(0, least=8 * 2**20, what="this")
    little_memory(None)  # a system that does not say: what the stage wants
    assert memory.budget(64 * 2**20) == 64 * 2**20
