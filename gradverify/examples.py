"""Property-tested checks: one gradient check per Hypothesis-drawn input, the failing one shrunk.

With an exact reference a check costs about one forward and one backward,
so checking many inputs is affordable, and many inputs find what one
standard-normal draw misses: a clip whose backward ignores the clip range
is wrong only where ``|x|`` exceeds it. :func:`property_check` draws each
floating-point input with :func:`input_arrays` -- a scale from tiny to large
(1e-4 ... 1e3), signs, values near zero, ties (repeated entries) and, where
the caller allows it, the leading (batch) axis's length -- runs the check on
each, stops at the first failing verdict, lets Hypothesis shrink that input
to a minimal one that still fails, and returns the minimal failing verdict
with its input. Inputs on which the code cannot run (outside its domain:
non-finite outputs, a refused shape) are discarded, not failures.

Cost: ``examples`` checks, plus the shrinking after a failure (tens to a
few hundred more checks, each on a smaller or simpler input).
"""

from __future__ import annotations

import dataclasses
from typing import Callable, Mapping

import numpy as np

from .errors import GradVerifyError, NonFiniteError, SpecError
from .verdict import CheckResult

__all__ = ["property_check", "input_arrays", "SCALES"]

#: Scales an input is drawn at; Hypothesis shrinks towards the first.
SCALES = (1.0, 1e-1, 10.0, 1e-4, 1e3)


def input_arrays(shape: tuple[int, ...], dtype, *, vary_batch: bool = False):
    """A Hypothesis strategy of float arrays like one input: scales, signs, near-zero values and ties.

    Elements are drawn in [-4, 4] (shrinking towards 0 and 1), multiplied
    by a scale from :data:`SCALES`; with ``vary_batch`` the leading axis's
    length is drawn from 1 to twice the given one.
    """
    from hypothesis import strategies as st
    from hypothesis.extra import numpy as hnp

    @st.composite
    def draw(d):
        sh = tuple(shape)
        if vary_batch and sh:
            sh = (d(st.integers(1, max(2 * sh[0], 1))),) + sh[1:]
        scale = d(st.sampled_from(SCALES))
        ties = d(st.booleans())
        elements = st.floats(-4.0, 4.0, allow_nan=False, allow_infinity=False, width=64)
        if ties:  # few distinct values: ties in max, sort, pooling, maximum
            elements = st.sampled_from((-2.0, -1.0, -0.5, 0.0, 0.5, 1.0, 2.0, 3.5))
        x = d(hnp.arrays(np.float64, sh, elements=elements))
        return (x * scale).astype(dtype)

    return draw()


def property_check(run: Callable[[dict[str, np.ndarray]], CheckResult], template: Mapping[str, np.ndarray], *,
                   examples: int, seed: int, vary_batch: bool = False) -> CheckResult:
    """Run ``run(inputs)`` on ``examples`` drawn variants of ``template``; the shrunk failing verdict, if any.

    ``template`` maps input names to arrays: floating-point ones are drawn
    (same shape and dtype, the leading axis varied with ``vary_batch``),
    others stay as given. Returns the minimal failing verdict, with the
    input that produced it (:attr:`CheckResult.counterexample`), or the
    passing verdict with the largest error/tolerance ratio seen.

    Raises:
        SpecError: ``examples`` is not a positive integer, or every drawn
            input was outside what the code accepts.
    """
    if isinstance(examples, bool) or not isinstance(examples, (int, np.integer)) or examples < 1:
        raise SpecError(f"examples must be a positive integer, got {examples!r}")
    from hypothesis import HealthCheck, Phase, assume, given, settings
    from hypothesis import seed as hyp_seed
    from hypothesis import strategies as st
    from hypothesis.errors import Unsatisfiable

    drawn = {k: input_arrays(v.shape, v.dtype, vary_batch=vary_batch and i == 0)
             for i, (k, v) in enumerate(template.items()) if isinstance(v, np.ndarray) and v.dtype.kind == "f"}
    if not drawn:
        raise SpecError("examples= draws floating-point inputs, and this check has none")
    state = {"tried": 0, "best": None, "failing": None, "first_failure": None, "evaluations": 0, "skipped": []}

    class _Failed(Exception):
        pass

    @hyp_seed(int(seed))
    @settings(max_examples=int(examples), deadline=None, database=None, derandomize=False,
              phases=(Phase.generate, Phase.shrink), suppress_health_check=list(HealthCheck), report_multiple_bugs=False)
    @given(st.fixed_dictionaries(drawn))
    def prop(values):
        inputs = dict(template)
        inputs.update(values)
        try:
            result = run(inputs)
        except NonFiniteError as exc:
            state["skipped"].append(str(exc))
            assume(False)
            return
        except GradVerifyError as exc:
            if "shape" not in str(exc).lower() or not vary_batch:
                raise
            state["skipped"].append(str(exc))
            assume(False)
            return
        state["evaluations"] += result.evaluations
        if state["first_failure"] is None:
            state["tried"] += 1
        if result.status == "fail":
            if state["first_failure"] is None:
                state["first_failure"] = state["tried"]
            state["failing"] = (result, {k: np.array(v, copy=True) for k, v in values.items()})
            raise _Failed()
        best = state["best"]
        if best is None or (result.worst is not None and (best.worst is None or result.worst.ratio > best.worst.ratio)):
            state["best"] = result

    try:
        prop()
    except _Failed:
        pass
    except Unsatisfiable:
        raise SpecError(f"every drawn input was refused by the code ({state['skipped'][-1] if state['skipped'] else ''}); "
                        "pass inputs inside its domain and check without examples=") from None
    if state["failing"] is not None:
        result, values = state["failing"]
        note = (f"property check: the input drawn at example {state['first_failure']} of at most {examples} failed; "
                "Hypothesis shrunk it to the minimal failing input below (counterexample)")
        return dataclasses.replace(result, warnings=result.warnings + (note,), examples=state["first_failure"],
                                   counterexample={k: v.tolist() for k, v in values.items()})
    best = state["best"]
    if best is None:
        raise SpecError("examples= ran no check (every drawn input was refused by the code)")
    return dataclasses.replace(best, examples=state["tried"], evaluations=state["evaluations"], warnings=best.warnings + (
        f"property check: {state['tried']} drawn inputs passed (scales {SCALES[0]:g} to {SCALES[-1]:g}, signs, "
        "near-zero values, ties); the verdict shown is the one closest to its tolerance",))
