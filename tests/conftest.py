"""Shared fixtures. Models are loaded inside fixtures, never at collection time."""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import pytest
from hypothesis import settings

# Property-based tests: a fixed, repeatable set of examples in CI; `--hypothesis-profile deep`
# draws many fresh ones.
settings.register_profile("ci", max_examples=40, derandomize=True)
settings.register_profile("deep", max_examples=400)
settings.load_profile("ci")

REPO = Path(__file__).resolve().parents[1]
# ../shared beside the checkout; GPT2XL_SHARED_DIR where it lies elsewhere (a GPU host that was
# sent the checkout and the fixture separately: tools/gpu_host_run.sh --shared).
SHARED = Path(os.environ.get("GPT2XL_SHARED_DIR") or REPO.parent / "shared")
TINY_SHAKESPEARE = SHARED / "models" / "gpt2-tiny-shakespeare"
TINY_SHAKESPEARE_LEGACY = SHARED / "models" / "gpt2-tiny-shakespeare-legacy"
SHARED_DATA = SHARED / "data"


def pytest_report_header() -> str:
    """Free disk where the tests write: a machine that runs out halfway turns every test that
    writes a file into an error, and this line says so before the first one."""
    tmp = Path(tempfile.gettempdir())
    return f"free disk in {tmp}: {shutil.disk_usage(tmp).free / 2**30:.1f} GiB"


@pytest.fixture(scope="session", autouse=True)
def native_kernels_built() -> None:
    """Build (or load) the native kernels once, in the user cache, before any test points
    GPT2XL_CACHE_DIR elsewhere: a build per temporary cache would cost ~30 s each."""
    from gpt2xl import kernels

    kernels.native()


@pytest.fixture(scope="session")
def tiny_shakespeare_dir() -> Path:
    if not (TINY_SHAKESPEARE / "model.safetensors").is_file():
        pytest.fail(f"{TINY_SHAKESPEARE} is missing: tests expect ../shared beside the repository")
    return TINY_SHAKESPEARE


@pytest.fixture(scope="session")
def tiny_shakespeare(tiny_shakespeare_dir):
    from gpt2xl.weights import load_model

    return load_model(str(tiny_shakespeare_dir))


@pytest.fixture(scope="session")
def eot_model():
    """A model whose next token is <|endoftext|> with probability ~1 at every position:
    ln_f outputs the constant e_0 and only the EOT embedding row has a component along e_0."""
    import torch

    from gpt2xl.config import EOT_TOKEN_ID, GPTConfig
    from gpt2xl.model import GPT

    model = GPT(GPTConfig(n_layer=1, n_head=1, n_embd=4, block_size=16)).eval()
    with torch.no_grad():
        model.transformer.wte.weight.zero_()
        model.transformer.wte.weight[EOT_TOKEN_ID, 0] = 100.0
        model.transformer.ln_f.weight.zero_()
        model.transformer.ln_f.bias.copy_(torch.tensor([1.0, 0.0, 0.0, 0.0]))
    return model
