"""Real ``torch.nn`` layers -- code no one here wrote -- pass ``check_layer`` in float64.

Each layer is converted to float64 and checked with default settings (no
tolerance passed: float64 rtol 1e-5 plus the finite-difference error
estimate), for its input and every trainable parameter, named as in
``named_parameters()``. A failure here is a false alarm of the checker.
Inputs are seeded standard normals (no ties for max pooling, no exact zeros
for PReLU); recurrent layers return nested tuples (``(out, (h, c))``),
which are checked whole. Sizes are small (at most ~200 elements per layer),
so the file runs in seconds.
"""

from __future__ import annotations

import numpy as np
import pytest

import gradverify as gv

torch = pytest.importorskip("torch")
nn = torch.nn


@pytest.fixture(autouse=True, scope="module")
def _one_torch_thread():
    # Tiny tensors: torch's intra-op thread pool only adds synchronisation,
    # which on a loaded machine (pytest -n N) costs milliseconds per op.
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


class SelfAttention(nn.Module):
    """``MultiheadAttention`` as a one-input layer returning a tensor."""

    def __init__(self):
        super().__init__()
        self.mha = nn.MultiheadAttention(4, 2, batch_first=True)

    def forward(self, x):
        return self.mha(x, x, x, need_weights=False)[0]


def _int_input(seed, high, shape):
    return torch.from_numpy(np.random.default_rng(seed).integers(0, high, shape))


# name -> (factory, input_shape or None, inputs factory or None)
LAYERS = {
    "Linear": (lambda: nn.Linear(4, 3), (2, 4), None),
    "Conv1d": (lambda: nn.Conv1d(2, 3, 3), (1, 2, 6), None),
    "Conv2d": (lambda: nn.Conv2d(2, 2, 3, padding=1), (1, 2, 4, 4), None),
    "Conv2d_groups_dilation_stride": (lambda: nn.Conv2d(2, 2, 2, stride=2, dilation=2, groups=2), (1, 2, 6, 6), None),
    "ConvTranspose2d": (lambda: nn.ConvTranspose2d(2, 2, 3, stride=2, padding=1, output_padding=1), (1, 2, 3, 3), None),
    "RNN": (lambda: nn.RNN(3, 4, batch_first=True), (2, 3, 3), None),
    "LSTM": (lambda: nn.LSTM(3, 3, batch_first=True), (2, 3, 3), None),
    "GRU": (lambda: nn.GRU(3, 3), (3, 2, 3), None),
    "MultiheadAttention_wrapped": (SelfAttention, (2, 3, 4), None),
    "TransformerEncoderLayer": (
        lambda: nn.TransformerEncoderLayer(4, 2, dim_feedforward=8, dropout=0.0, batch_first=True), (2, 3, 4), None),
    "LayerNorm": (lambda: nn.LayerNorm(5), (3, 5), None),
    "GroupNorm": (lambda: nn.GroupNorm(2, 4), (2, 4, 3), None),
    "BatchNorm1d_train": (lambda: nn.BatchNorm1d(4).train(), (5, 4), None),
    "BatchNorm2d_eval": (lambda: nn.BatchNorm2d(2).eval(), (2, 2, 3, 3), None),
    "Embedding": (lambda: nn.Embedding(6, 3), None, lambda: _int_input(0, 6, (2, 4))),
    "Bilinear": (lambda: nn.Bilinear(3, 2, 2), None,
                 lambda: (torch.randn(4, 3, dtype=torch.float64), torch.randn(4, 2, dtype=torch.float64))),
    "PReLU": (lambda: nn.PReLU(3), (4, 3), None),
    "Softplus": (lambda: nn.Softplus(beta=2.0), (3, 4), None),
    "GELU": (lambda: nn.GELU(), (3, 4), None),
    "GELU_tanh": (lambda: nn.GELU(approximate="tanh"), (3, 4), None),
    "ELU": (lambda: nn.ELU(alpha=0.7), (3, 4), None),
    "MaxPool2d": (lambda: nn.MaxPool2d(2), (1, 2, 4, 4), None),
    "AvgPool2d": (lambda: nn.AvgPool2d(2, stride=1), (1, 2, 4, 4), None),
    "Dropout_train": (lambda: nn.Sequential(nn.Linear(3, 5), nn.Dropout(0.4)).train(), (4, 3), None),
}


@pytest.mark.parametrize("name", list(LAYERS))
def test_torch_layer_passes_in_float64(name):
    factory, shape, make_inputs = LAYERS[name]
    torch.manual_seed(0)
    layer = factory().double()
    if make_inputs is not None:
        result = gv.check_layer(layer, inputs=make_inputs())
    else:
        result = gv.check_layer(layer, shape, dtype=np.float64)
    assert result.passed and result.status == "pass", f"false alarm on torch.nn {name}:\n{result}"
    assert result.dtype == "float64"
    checked = [s.name for s in result.inputs if s.checked]
    params = [n for n, p in layer.named_parameters() if p.requires_grad]
    assert checked[len(checked) - len(params):] == params  # every parameter, named as torch names it


def test_embedding_index_input_is_a_constant():
    torch.manual_seed(0)
    result = gv.check_layer(nn.Embedding(6, 3).double(), inputs=_int_input(1, 6, (5,)))
    assert result.passed, str(result)
    assert [s.name for s in result.inputs if s.checked] == ["weight"]
    assert any("'x'" in w and "constant" in w for w in result.warnings)


def test_multihead_attention_raw_with_keyword_inputs_and_tuple_output():
    # The module returns (output, attention weights); both are checked.
    # need_weights=True is a non-array keyword passed through unchanged.
    torch.manual_seed(0)
    mha = nn.MultiheadAttention(4, 2, batch_first=True).double()
    q, kv = torch.randn(1, 2, 4, dtype=torch.float64), torch.randn(1, 3, 4, dtype=torch.float64)
    result = gv.check_layer(mha, inputs={"query": q, "key": kv, "value": kv, "need_weights": True})
    assert result.passed, str(result)
    assert {"query", "key", "value", "in_proj_weight", "out_proj.weight"} <= {s.name for s in result.inputs}
