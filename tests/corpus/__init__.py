"""Test corpora for gradverify: hand-written layers and function pairs.

``tests.corpus.mutants`` holds the mutation suite: realistic backward bugs,
each next to its correct twin, used by ``tests/test_mutation_suite.py`` and
``benchmarks/corpus_vs_torch_gradcheck.py``. Nothing here imports gradverify
at module import; the corpus is plain numpy.
"""
