"""Split-K decode matmuls (``model.split_k_linear`` / ``Projection``) against ``F.linear``.

The split path only reorders fp32 sums, so it must agree with ``F.linear`` to rounding, in both
weight storage layouts, and the model must take it exactly when it is enabled, has more than one
thread and sees a decode-sized input (checked with the profiler: the split path is a ``bmm``).
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from gpt2xl.errors import ConfigError
from gpt2xl.model import SPLIT_K_MAX_ROWS, Projection, split_k_linear
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


@pytest.mark.parametrize("storage", ["in_out", "out_in"])
@pytest.mark.parametrize("splits", [2, 4])
@pytest.mark.parametrize("lead", [(1,), (3,), (2, 1), (4, 8)])
@pytest.mark.parametrize("with_bias", [True, False])
def test_split_k_linear_matches_f_linear(storage, splits, lead, with_bias):
    g = torch.Generator().manual_seed(0)
    w = _weight(48, 64, storage, g)
    b = torch.randn(48, generator=g) if with_bias else None
    x = torch.randn(*lead, 64, generator=g)
    got = split_k_linear(x, w, b, splits=splits)
    assert got.shape == (*lead, 48)
    torch.testing.assert_close(got, F.linear(x, w, b), rtol=1e-5, atol=1e-5)


def _ops(fn) -> set[str]:
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        fn()
    return {e.key for e in prof.key_averages()}


def test_projection_takes_split_path_only_when_it_applies(threads):
    proj = Projection(64, 32)
    x1 = torch.randn(1, 1, 64)  # (B, T, C): one decode step
    with torch.no_grad():
        threads(2)
        assert "aten::bmm" not in _ops(lambda: proj(x1))  # off by default
        proj.split_k = True
        assert "aten::bmm" in _ops(lambda: proj(x1))
        torch.testing.assert_close(proj(x1), F.linear(x1, proj.weight, proj.bias), rtol=1e-5, atol=1e-6)
        many = torch.randn(1, SPLIT_K_MAX_ROWS + 1, 64)  # a prefill: the regular GEMM path
        assert "aten::bmm" not in _ops(lambda: proj(many))
        threads(3)  # 64 % 3 != 0: falls back to F.linear
        assert "aten::bmm" not in _ops(lambda: proj(x1))
        threads(1)  # nothing to split over
        assert "aten::bmm" not in _ops(lambda: proj(x1))


def test_split_k_model_matches_plain_model_on_trained_checkpoint(tiny_shakespeare_dir, threads):
    threads(2)
    split = load_model(str(tiny_shakespeare_dir), split_k=True)
    plain = load_model(str(tiny_shakespeare_dir), split_k=False)
    assert split.model.split_k_enabled() and not plain.model.split_k_enabled()
    idx = torch.arange(300, 316)[None]  # (1, 16): under SPLIT_K_MAX_ROWS, so split end to end
    with torch.no_grad():
        assert "aten::bmm" in _ops(lambda: split.model(idx))
        torch.testing.assert_close(split.model(idx), plain.model(idx), rtol=0, atol=2e-5)


def test_load_model_enables_split_k_for_cpu_fp32_only(tiny_shakespeare_dir):
    fp32 = load_model(str(tiny_shakespeare_dir))
    assert fp32.split_k and fp32.model.split_k_enabled() and fp32.describe()["split_k"] is True
    bf16 = load_model(str(tiny_shakespeare_dir), dtype="bf16")
    assert not bf16.split_k and not bf16.model.split_k_enabled()
    with pytest.raises(ConfigError, match="split_k"):
        load_model(str(tiny_shakespeare_dir), split_k="yes")
