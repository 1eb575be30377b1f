"""The TensorFlow and PyTensor mutation suite: every custom-gradient bug caught and located, every twin passing.

The corpus (``tests/corpus/framework_mutants_tf_pt.py``) holds buggy
``tf.custom_gradient`` functions and PyTensor ``Op.grad``s -- a dropped
term, a transposed weight gradient, a wrong sign, a 0.1% error in one
element, a float32 gradient, a gradient that ignores its upstream
gradient... -- each with its correct twin, in float64. No tolerance is
passed. Each case runs in full and fast mode at seed 0 (and the default
mode at seed 1). Each framework's cases are skipped with a reason when it
is not installed.

Cost: 11 + 10 tiny cases; TensorFlow ~10 s (import), PyTensor ~20 s
(two small compilations per case and dtype).
"""

from __future__ import annotations

import importlib.util

import pytest

from tests.corpus.framework_mutants_tf_pt import BUGS, ENTRIES, TWINS, by_name


RUNS = [("full", 0), ("fast", 0), ("auto", 1)]


def _need(entry):
    if importlib.util.find_spec(entry.framework) is None:
        pytest.skip(f"{entry.framework} not installed (pip install gradverify[{entry.framework}])")


def _ids(entries):
    return [e.name for e in entries]


def test_corpus_size_and_pairing():
    for fw in ("tensorflow", "pytensor"):
        assert sum(1 for e in BUGS if e.framework == fw) >= 10, fw
    for e in ENTRIES:
        assert by_name(e.twin).twin == e.name


@pytest.mark.parametrize("mode,seed", RUNS)
@pytest.mark.parametrize("entry", BUGS, ids=_ids(BUGS))
def test_bug_is_caught_and_located(entry, mode, seed):
    _need(entry)
    result = entry.check(mode=mode, seed=seed)
    assert result.status == "fail", f"{entry.name}: bug not caught ({entry.description})\n{result}"
    assert result.worst.input == entry.expected_input, f"{entry.name}\n{result}"
    if entry.expected_index is not None:
        assert tuple(result.worst.index) == entry.expected_index, f"{entry.name}\n{result}"


@pytest.mark.parametrize("mode,seed", RUNS)
@pytest.mark.parametrize("entry", TWINS, ids=_ids(TWINS))
def test_correct_twin_passes(entry, mode, seed):
    _need(entry)
    result = entry.check(mode=mode, seed=seed)
    assert result.passed and result.status == "pass", f"false alarm on {entry.name}:\n{result}"
    assert result.to_dict()["dtype"] == "float64"
