"""The framework mutation suite: every torch/JAX backward bug caught and located, every twin passing.

The corpus (``tests/corpus/framework_mutants.py``) holds buggy
``torch.autograd.Function`` backwards and ``jax.custom_vjp`` rules --
transposes, missing factors, signs, ignored incoming gradients, wrong
residuals, wrong unbroadcast axes, a 0.1% error in one element, an
approximate derivative (~1e-3 off), statistics treated as constants,
swapped output cotangents -- each with its correct twin, all in float64.
No tolerance is passed: the defaults (float64: rtol 1e-5 plus the
finite-difference error estimate) are what is under test; the smallest bug
(0.1% in one element) is 100x over that line, float64 FD noise ~1e-9 far
under it. Each case runs in every mode at seed 0 and in the default mode at
seeds 1-2 (the seed draws the cotangent).

Cost: ~50 tiny checks (at most 32 elements per input) per seed and mode;
a few seconds.
"""

from __future__ import annotations

import importlib
import sys

import pytest

from tests.corpus.framework_mutants import BUGS, ENTRIES, TWINS, by_name

import gradverify as gv

MODES = tuple(getattr(importlib.import_module("gradverify.api"), "MODES", ("auto",)))
# Every mode at seed 0; the default mode again at seeds 1 and 2 (the seed draws the cotangent).
RUNS = [(m, 0) for m in MODES] + [("auto", 1), ("auto", 2)]


def _need(entry):
    pytest.importorskip(entry.framework)


@pytest.fixture(autouse=True, scope="module")
def _one_torch_thread():
    # Tiny tensors: torch's intra-op thread pool only adds synchronisation,
    # which on a loaded machine (pytest -n N) costs milliseconds per op.
    try:
        import torch
    except ImportError:
        yield
        return
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def _ids(entries):
    return [e.name for e in entries]


def test_corpus_size_and_pairing():
    for fw in ("torch", "jax"):
        assert sum(1 for e in BUGS if e.framework == fw) >= 8, fw
    for e in ENTRIES:
        assert by_name(e.twin).twin == e.name
        assert by_name(e.twin).framework == e.framework
    # Building the corpus imports no framework.
    assert "tests.corpus.framework_mutants" in sys.modules


@pytest.mark.parametrize("mode,seed", RUNS)
@pytest.mark.parametrize("entry", BUGS, ids=_ids(BUGS))
def test_bug_is_caught_and_located(entry, mode, seed):
    _need(entry)
    result = entry.check(mode=mode, seed=seed)
    assert result.status == "fail", f"{entry.name}: bug not caught ({entry.description})\n{result}"
    assert result.passed is False
    assert result.worst.input == entry.expected_input, (
        f"{entry.name}: worst element in {result.worst.input!r}, expected {entry.expected_input!r}\n{result}")
    if entry.expected_index is not None:
        assert tuple(result.worst.index) == entry.expected_index, f"{entry.name}\n{result}"
    assert f"'{entry.expected_input}'" in str(result)


@pytest.mark.parametrize("mode,seed", RUNS)
@pytest.mark.parametrize("entry", TWINS, ids=_ids(TWINS))
def test_correct_twin_passes(entry, mode, seed):
    _need(entry)
    result = entry.check(mode=mode, seed=seed)
    assert result.passed, f"false alarm on {entry.name}:\n{result}"
    assert result.status == "pass"
    # The analytic pass ran in float64 (torch tensors and JAX arrays alike).
    assert result.to_dict()["dtype"] == "float64"


@pytest.mark.parametrize("entry", BUGS, ids=_ids(BUGS))
def test_assert_gradients_raises_on_bug(entry):
    _need(entry)
    fn, inputs = entry.build()
    with pytest.raises(gv.GradientMismatch) as info:
        gv.assert_gradients(fn, inputs)
    assert info.value.result.worst.input == entry.expected_input
