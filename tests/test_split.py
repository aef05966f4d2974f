"""Split decode matmuls (``model.split_linear``, one of the tuner's candidate kernels) against
``F.linear``.

The split path only reorders fp32 sums, so it must agree with ``F.linear`` to rounding in both
weight storage layouts, including output widths the split does not divide (overlapping blocks,
as for the 50257-word ``lm_head``), and a projection must take it exactly when its plan says so,
it has more than one thread and sees a decode-sized input (checked with the profiler: the split
path is a ``bmm``).
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from gpt2xl.model import DECODE_MAX_ROWS, PREFILL_MAX_ROWS, ProjectionPlan, Projection, plain_plan, split_linear
from gpt2xl.weights import load_model


@pytest.fixture
def threads():
    """Set torch's thread count for one test and restore it afterwards."""
    before = torch.get_num_threads()
    yield torch.set_num_threads
    torch.set_num_threads(before)


def _weight(out_features: int, in_features: int, storage: str, g: torch.Generator) -> torch.Tensor:
    if storage == "in_out":  # contiguous [in, out], seen as its [out, in] transpose (GPT-2 Conv1D)
        return torch.randn(in_features, out_features, generator=g).t()
    return torch.randn(out_features, in_features, generator=g)


def _ops(fn) -> set[str]:
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        fn()
    return {e.key for e in prof.key_averages()}


@pytest.mark.parametrize("storage", ["in_out", "out_in"])
@pytest.mark.parametrize("splits", [2, 3, 4])
@pytest.mark.parametrize("out_features", [48, 50])  # 50: blocks of 3 and 4 overlap
@pytest.mark.parametrize("lead", [(1,), (3,), (2, 1), (4, 8)])
@pytest.mark.parametrize("with_bias", [True, False])
def test_split_linear_matches_f_linear(storage, splits, out_features, lead, with_bias):
    g = torch.Generator().manual_seed(0)
    w = _weight(out_features, 96, storage, g)
    b = torch.randn(out_features, generator=g) if with_bias else None
    x = torch.randn(*lead, 96, generator=g)
    got = split_linear(x, w, b, splits=splits)
    assert got.shape == (*lead, out_features)
    torch.testing.assert_close(got, F.linear(x, w, b), rtol=1e-5, atol=1e-5)


def test_overlapping_blocks_keep_every_output_once():
    # 7 outputs over 2 blocks of 4 rows overlapping by one: an identity weight shows which input
    # lands in which output, so a dropped or duplicated row would show as a wrong permutation.
    w = torch.eye(7)  # (out, in), contiguous
    x = torch.arange(7.0)[None]  # (1, 7)
    assert split_linear(x, w, None, splits=2).tolist() == [[0, 1, 2, 3, 4, 5, 6]]
    assert split_linear(x, w, None, splits=3).tolist() == [[0, 1, 2, 3, 4, 5, 6]]


def test_split_falls_back_where_it_cannot_split():
    g = torch.Generator().manual_seed(1)
    x = torch.randn(1, 10, generator=g)
    in_out = _weight(6, 10, "in_out", g)  # split-K over 3 needs 10 % 3 == 0
    assert "aten::bmm" not in _ops(lambda: split_linear(x, in_out, None, splits=3))
    assert torch.equal(split_linear(x, in_out, None, splits=3), F.linear(x, in_out))
    strided = torch.randn(6, 20, generator=g)[:, ::2]  # neither layout: a strided view
    assert torch.equal(split_linear(x, strided, None, splits=2), F.linear(x, strided))
    out_in = _weight(6, 10, "out_in", g)
    assert torch.equal(split_linear(x, out_in, None, splits=1), F.linear(x, out_in))  # nothing to split


def test_projection_takes_split_path_only_when_it_applies(threads):
    proj = Projection(64, 32)
    x1 = torch.randn(1, 1, 64)  # (B, T, C): one decode step
    with torch.no_grad():
        threads(2)
        assert "aten::bmm" not in _ops(lambda: proj(x1))  # linear by default
        proj.decode_kernel = "split"
        assert "aten::bmm" in _ops(lambda: proj(x1))
        torch.testing.assert_close(proj(x1), F.linear(x1, proj.weight, proj.bias), rtol=1e-5, atol=1e-6)
        many = torch.randn(1, DECODE_MAX_ROWS + 1, 64)  # a prefill: the prefill kernel (linear)
        assert "aten::bmm" not in _ops(lambda: proj(many))
        threads(1)  # nothing to split over
        assert "aten::bmm" not in _ops(lambda: proj(x1))


def test_split_plan_matches_plain_model_on_trained_checkpoint(tiny_shakespeare_dir, threads):
    threads(2)
    split = load_model(str(tiny_shakespeare_dir), autotune="off")
    plain = load_model(str(tiny_shakespeare_dir), autotune="off")
    split.model.apply_kernel_plan({k: ProjectionPlan(layout="out_in", decode="split", prefill="split") for k in plain_plan()})
    assert split.model.kernels_active() and not plain.model.kernels_active()
    idx = torch.arange(300, 316)[None]  # (1, 16): a prefill-sized call, split end to end
    assert idx.numel() <= PREFILL_MAX_ROWS
    with torch.no_grad():
        assert "aten::bmm" in _ops(lambda: split.model(idx))
        torch.testing.assert_close(split.model(idx), plain.model(idx), rtol=0, atol=2e-5)
