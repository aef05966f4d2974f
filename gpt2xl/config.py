"""GPT-2 model shapes: one frozen dataclass and the presets, side by side."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any

from gpt2xl.errors import ConfigError

EOT_TOKEN_ID = 50256  # <|endoftext|>, the last id of GPT-2's BPE vocabulary
GPT2_VOCAB_SIZE = 50257
MAX_DIMENSION = 2**31 - 1  # a config.json size beyond int32 is corrupt, not a model to size memory for


@dataclass(frozen=True, kw_only=True)
class GPTConfig:
    """The shape of a GPT-2 model. Everything else about the architecture is fixed:
    pre-LayerNorm blocks, GELU (tanh approximation), learned positions, tied embeddings."""

    n_layer: int = 12
    n_head: int = 12
    n_embd: int = 768  # must divide by n_head: head size = n_embd // n_head
    block_size: int = 1024  # context length: number of learned position embeddings
    vocab_size: int = GPT2_VOCAB_SIZE
    n_inner: int | None = None  # MLP width; None means GPT-2's 4 * n_embd
    layer_norm_epsilon: float = 1e-5  # GPT-2's value, not PyTorch's default

    def __post_init__(self) -> None:
        for name in ("n_layer", "n_head", "n_embd", "block_size", "vocab_size"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
                raise ConfigError(f"GPTConfig.{name} must be a positive integer, got {value!r}.")
        if self.n_embd % self.n_head != 0:
            raise ConfigError(
                f"GPTConfig.n_embd ({self.n_embd}) must be divisible by n_head ({self.n_head})."
            )
        if self.n_inner is not None and (
            isinstance(self.n_inner, bool) or not isinstance(self.n_inner, int) or self.n_inner <= 0
        ):
            raise ConfigError(f"GPTConfig.n_inner must be a positive integer or None, got {self.n_inner!r}.")
        if not 0 < self.layer_norm_epsilon < math.inf:
            raise ConfigError(f"GPTConfig.layer_norm_epsilon must be finite and > 0, got {self.layer_norm_epsilon!r}.")

    @property
    def head_size(self) -> int:
        return self.n_embd // self.n_head

    @property
    def mlp_width(self) -> int:
        return self.n_inner if self.n_inner is not None else 4 * self.n_embd

    def num_parameters(self) -> int:
        """Parameters with the tied lm_head counted once (the way GPT-2's sizes are quoted)."""
        c, f, n = self.n_embd, self.mlp_width, self.n_layer
        per_block = (
            2 * 2 * c  # ln_1, ln_2
            + c * 3 * c + 3 * c  # attn.c_attn
            + c * c + c  # attn.c_proj
            + c * f + f  # mlp.c_fc
            + f * c + c  # mlp.c_proj
        )
        return self.vocab_size * c + self.block_size * c + n * per_block + 2 * c

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_hf_config(cls, hf: object, *, source: str = "config.json") -> GPTConfig:
        """Read a Hugging Face GPT-2 ``config.json`` (its parsed JSON; ``source`` names the file in
        messages).

        Raises ConfigError naming the file and the field for a document that is not a JSON object,
        a missing or mistyped field (JSON numbers only: ``"12"``, ``1.5``, ``true`` and ``null`` are
        refused where an integer is needed), a vocabulary smaller than GPT-2's tokenizer, and
        checkpoints whose architecture differs from what this model computes (another activation,
        untied embeddings, layer-index attention scaling), since loading them would silently give
        different logits.
        """
        if not isinstance(hf, dict):
            raise ConfigError(
                f"{source} holds a JSON {_json_type(hf)}, not an object of GPT-2 settings; "
                "pass a Hugging Face GPT-2 checkpoint directory."
            )
        model_type = hf.get("model_type", "gpt2")
        if model_type != "gpt2":
            raise ConfigError(f"{source} has model_type {model_type!r}; only 'gpt2' checkpoints are supported.")
        activation = hf.get("activation_function", "gelu_new")
        if activation not in ("gelu_new", "gelu_pytorch_tanh"):
            raise ConfigError(
                f"{source} asks for activation {activation!r}; this model implements GPT-2's "
                "tanh GELU ('gelu_new') only."
            )
        if hf.get("scale_attn_by_inverse_layer_idx", False):
            raise ConfigError(f"{source} sets scale_attn_by_inverse_layer_idx, which GPT-2 does not use.")
        if not hf.get("scale_attn_weights", True):
            raise ConfigError(f"{source} turns off scale_attn_weights, which GPT-2 uses.")
        if not hf.get("tie_word_embeddings", True):
            raise ConfigError(f"{source} unties the word embeddings; GPT-2 ties lm_head to wte.")

        def integer(field: str, default: object = _REQUIRED) -> int:
            value = hf.get(field, default)
            if value is _REQUIRED:
                raise ConfigError(f"{source} lacks the field {field!r} that a GPT-2 config needs.")
            if isinstance(value, bool) or not isinstance(value, int) or not 0 < value <= MAX_DIMENSION:
                raise ConfigError(
                    f"{source} field {field!r} must be an integer in [1, {MAX_DIMENSION:,}], got {value!r}."
                )
            return value

        block_size = integer("n_positions", hf.get("n_ctx", 1024))
        vocab_size = integer("vocab_size", GPT2_VOCAB_SIZE)
        if vocab_size < GPT2_VOCAB_SIZE:
            raise ConfigError(
                f"{source} field 'vocab_size' is {vocab_size}, fewer than the {GPT2_VOCAB_SIZE} tokens of "
                "GPT-2's tokenizer that this tool uses; pass a GPT-2 checkpoint."
            )
        epsilon = hf.get("layer_norm_epsilon", 1e-5)
        if isinstance(epsilon, bool) or not isinstance(epsilon, (int, float)) or not 0 < epsilon < math.inf:
            raise ConfigError(f"{source} field 'layer_norm_epsilon' must be a finite number > 0, got {epsilon!r}.")
        n_embd, n_head = integer("n_embd"), integer("n_head")
        if n_embd % n_head != 0:
            raise ConfigError(f"{source} field 'n_embd' ({n_embd}) must be divisible by 'n_head' ({n_head}).")
        return cls(
            n_layer=integer("n_layer"),
            n_head=n_head,
            n_embd=n_embd,
            block_size=block_size,
            vocab_size=vocab_size,
            n_inner=None if hf.get("n_inner") is None else integer("n_inner"),
            layer_norm_epsilon=float(epsilon),
        )


_REQUIRED = object()  # sentinel: a config.json field without a default


def _json_type(value: object) -> str:
    """The JSON name of a parsed value's type, for messages."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, (int, float)):
        return "number"
    if isinstance(value, str):
        return "string"
    return "array" if isinstance(value, list) else type(value).__name__


# GPT-2's four released sizes, and tiny shapes for tests. "tiny-xl" keeps XL's width and head
# count (1600 / 25, head size 64) at two layers so parity tests cover XL's geometry on a laptop.
PRESETS: dict[str, GPTConfig] = {
    "gpt2": GPTConfig(n_layer=12, n_head=12, n_embd=768),  # 124M
    "gpt2-medium": GPTConfig(n_layer=24, n_head=16, n_embd=1024),  # 350M
    "gpt2-large": GPTConfig(n_layer=36, n_head=20, n_embd=1280),  # 774M
    "gpt2-xl": GPTConfig(n_layer=48, n_head=25, n_embd=1600),  # 1558M
    "tiny": GPTConfig(n_layer=2, n_head=4, n_embd=64, block_size=128),
    "tiny-xl": GPTConfig(n_layer=2, n_head=25, n_embd=1600, block_size=128),
}


def get_preset(name: str) -> GPTConfig:
    """The preset called ``name``; ConfigError listing the choices otherwise."""
    try:
        return PRESETS[name]
    except KeyError:
        raise ConfigError(f"Unknown preset {name!r}; choose one of: {', '.join(PRESETS)}.") from None
