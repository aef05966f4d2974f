"""GPT-2 model shapes: one frozen dataclass and the presets, side by side."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from gpt2xl.errors import ConfigError

EOT_TOKEN_ID = 50256  # <|endoftext|>, the last id of GPT-2's BPE vocabulary
GPT2_VOCAB_SIZE = 50257


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
            if not isinstance(value, int) or value <= 0:
                raise ConfigError(f"GPTConfig.{name} must be a positive integer, got {value!r}.")
        if self.n_embd % self.n_head != 0:
            raise ConfigError(
                f"GPTConfig.n_embd ({self.n_embd}) must be divisible by n_head ({self.n_head})."
            )
        if self.n_inner is not None and (not isinstance(self.n_inner, int) or self.n_inner <= 0):
            raise ConfigError(f"GPTConfig.n_inner must be a positive integer or None, got {self.n_inner!r}.")
        if not self.layer_norm_epsilon > 0:
            raise ConfigError(f"GPTConfig.layer_norm_epsilon must be > 0, got {self.layer_norm_epsilon!r}.")

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
    def from_hf_config(cls, hf: dict[str, Any]) -> "GPTConfig":
        """Read a Hugging Face GPT-2 ``config.json`` (as a dict).

        Raises ConfigError for checkpoints whose architecture differs from what this model
        computes (another activation, untied embeddings, layer-index attention scaling), since
        loading them would silently give different logits.
        """
        model_type = hf.get("model_type", "gpt2")
        if model_type != "gpt2":
            raise ConfigError(f"config.json has model_type {model_type!r}; only 'gpt2' checkpoints are supported.")
        activation = hf.get("activation_function", "gelu_new")
        if activation not in ("gelu_new", "gelu_pytorch_tanh"):
            raise ConfigError(
                f"config.json asks for activation {activation!r}; this model implements GPT-2's "
                "tanh GELU ('gelu_new') only."
            )
        if hf.get("scale_attn_by_inverse_layer_idx", False):
            raise ConfigError("config.json sets scale_attn_by_inverse_layer_idx, which GPT-2 does not use.")
        if not hf.get("scale_attn_weights", True):
            raise ConfigError("config.json turns off scale_attn_weights, which GPT-2 uses.")
        if not hf.get("tie_word_embeddings", True):
            raise ConfigError("config.json unties the word embeddings; GPT-2 ties lm_head to wte.")
        try:
            return cls(
                n_layer=int(hf["n_layer"]),
                n_head=int(hf["n_head"]),
                n_embd=int(hf["n_embd"]),
                block_size=int(hf.get("n_positions", hf.get("n_ctx", 1024))),
                vocab_size=int(hf.get("vocab_size", GPT2_VOCAB_SIZE)),
                n_inner=None if hf.get("n_inner") is None else int(hf["n_inner"]),
                layer_norm_epsilon=float(hf.get("layer_norm_epsilon", 1e-5)),
            )
        except KeyError as exc:
            raise ConfigError(f"config.json lacks the field {exc.args[0]!r} that a GPT-2 config needs.") from exc


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
