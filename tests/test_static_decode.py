"""Static-shape decoding (``gpt2xl.static_decode``) against the regular cached path.

The static step attends over every cache slot under a mask and takes its position as a tensor,
so that CUDA graphs can replay it; it must give the regular path's logits and tokens, on CPU
eagerly and under ``torch.compile``. With CUDA graphs on a GPU it is tested in test_cuda.py.
"""

from __future__ import annotations

import pytest
import torch

from gpt2xl.errors import ConfigError
from gpt2xl.sampling import SamplingConfig, generate, make_generator
from gpt2xl.static_decode import STATIC_LEN_MULTIPLE, StaticDecoder, static_cache_len
from gpt2xl.weights import load_model

RAGGED = [[464, 3290, 318, 257, 1332, 13], [40, 1101], [1212, 318, 257]]  # left padding 0, 4, 3


def test_static_cache_len_rounds_up_within_the_context():
    assert static_cache_len(1, 1024) == STATIC_LEN_MULTIPLE
    assert static_cache_len(STATIC_LEN_MULTIPLE + 1, 1024) == 2 * STATIC_LEN_MULTIPLE
    assert static_cache_len(1000, 1024) == 1024
    assert static_cache_len(300, 200) == 200
    with pytest.raises(ConfigError):
        static_cache_len(0, 1024)


def test_static_step_logits_equal_the_regular_decode(tiny_shakespeare):
    model = tiny_shakespeare.model
    idx = torch.randint(0, 50257, (2, 40), generator=torch.Generator().manual_seed(3))  # (B, T)
    decoder = StaticDecoder(model, batch_size=2, max_len=128)
    pad = torch.zeros(2, dtype=torch.long)
    with torch.no_grad():
        regular = model.new_cache(batch_size=2, max_len=40)
        model(idx[:, :30], cache=regular)
        model(idx[:, :30], cache=decoder.cache)  # prefill through the regular path, as generate does
        for t in range(30, 40):
            want = model(idx[:, t : t + 1], cache=regular, start_pos=t)[:, -1, :]  # (B, V)
            got = decoder.step(idx[:, t : t + 1], torch.tensor([t]), pad)  # (B, V)
            torch.testing.assert_close(got, want, rtol=0, atol=1e-4)


@pytest.mark.parametrize("stop_at_eot", [False, True])
def test_static_generate_gives_the_same_tokens_ragged_and_past_the_context(tiny_shakespeare, stop_at_eot):
    model = tiny_shakespeare.model
    prompts = [p * 17 for p in RAGGED]  # 102, 34 and 51 tokens: 102 + 40 runs past the 128 context
    cfg = SamplingConfig(max_new_tokens=40, temperature=0.9, top_k=50, stop_at_eot=stop_at_eot, eot_id=13)
    want = generate(model, prompts, cfg, generator=make_generator(7))
    decoder = StaticDecoder(model, batch_size=3, max_len=static_cache_len(102 + 39, 128))
    for _ in range(2):  # the decoder is reused across calls, stale slots and all
        got = generate(model, prompts, cfg, generator=make_generator(7), static=decoder)
        assert got.tokens == want.tokens
        assert got.hit_eot == want.hit_eot


def test_static_decoder_must_fit_the_call(tiny_shakespeare, tiny_shakespeare_dir):
    model = tiny_shakespeare.model
    cfg = SamplingConfig(max_new_tokens=20, stop_at_eot=False)
    other = load_model(str(tiny_shakespeare_dir)).model
    with pytest.raises(ConfigError, match="another model"):
        generate(model, [[1, 2, 3]], cfg, static=StaticDecoder(other, batch_size=1, max_len=128))
    with pytest.raises(ConfigError, match="rows"):
        generate(model, [[1, 2, 3]], cfg, static=StaticDecoder(model, batch_size=2, max_len=128))
    with pytest.raises(ConfigError, match="slots"):
        generate(model, [[1, 2, 3]], cfg, static=StaticDecoder(model, batch_size=1, max_len=8))
    with pytest.raises(ConfigError, match="compile"):
        StaticDecoder(model, batch_size=1, max_len=8, compile="max-speed")


@pytest.mark.slow
def test_compiled_static_step_gives_the_same_tokens_on_cpu(tiny_shakespeare_dir):
    # fullgraph=True: a graph break in the model would raise here, long before a GPU run.
    model = load_model(str(tiny_shakespeare_dir)).model
    cfg = SamplingConfig(max_new_tokens=24, temperature=0.8, top_k=40, stop_at_eot=False)
    want = generate(model, RAGGED, cfg, generator=make_generator(1))
    decoder = StaticDecoder(model, batch_size=3, max_len=128, compile="default")
    got = generate(model, RAGGED, cfg, generator=make_generator(1), static=decoder)
    assert got.tokens == want.tokens
