"""Turn a model spec into a ready model on a device and dtype.

Specs, tried in this order:

- ``random:<preset>`` — seeded random weights at a preset's shape (``random:gpt2-xl``), for
  throughput work. Everything made with them is labelled random.
- a local directory in Hugging Face layout: ``config.json`` plus ``model.safetensors`` (or a
  sharded ``model.safetensors.index.json``, or ``pytorch_model.bin``). Both today's layout
  (keys prefixed ``transformer.``) and the original hub files (no prefix, ``attn.bias`` buffers)
  load. The shape comes from ``config.json``.
- a hub name (``gpt2`` … ``gpt2-xl``, ``openai-community/gpt2-xl`` or any ``owner/name``): fetched
  through ``huggingface_hub`` — online, or from the local HF cache when offline.

Conv1D weights (``attn.c_attn``, ``attn.c_proj``, ``mlp.c_fc``, ``mlp.c_proj``) are stored
``[in, out]`` by GPT-2 and are transposed to ``nn.Linear``'s ``[out, in]``; every key and shape is
checked and a mismatch names the keys. Nothing is unpickled beyond ``weights_only=True``.
Tensors are read one at a time straight into the model, so loading peaks near one copy of the
weights (building a transformers model and copying from it would peak at two).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Literal

import torch

from gpt2xl.config import GPTConfig, get_preset
from gpt2xl.devices import check_dtype_supported, dtype_name, resolve_device, resolve_dtype
from gpt2xl.errors import ConfigError, WeightsError
from gpt2xl.hugepages import advise_huge_pages
from gpt2xl.autotune import TuneReport, check_mode, tune
from gpt2xl.model import GPT, KernelPlan, ProjectionPlan, StorageLayout, init_random_

HUB_ALIASES: dict[str, str] = {
    "gpt2": "openai-community/gpt2",
    "gpt2-medium": "openai-community/gpt2-medium",
    "gpt2-large": "openai-community/gpt2-large",
    "gpt2-xl": "openai-community/gpt2-xl",
}
CONV1D_SUFFIXES = ("attn.c_attn.weight", "attn.c_proj.weight", "mlp.c_fc.weight", "mlp.c_proj.weight")
BUFFER_SUFFIXES = (".attn.bias", ".attn.masked_bias")  # causal-mask buffers of old checkpoints
RANDOM_PREFIX = "random:"


@dataclass(frozen=True, kw_only=True)
class WeightsSource:
    """Where a model's weights came from: recorded in every result."""

    kind: Literal["pretrained", "checkpoint", "random"]
    spec: str  # what the user typed
    files: tuple[str, ...] = ()  # weight files read, absolute paths
    seed: int | None = None  # random weights only

    @property
    def is_random(self) -> bool:
        return self.kind == "random"

    @property
    def label(self) -> str:
        if self.kind == "random":
            return f"RANDOM weights ({self.spec.removeprefix(RANDOM_PREFIX)} shape, seed {self.seed})"
        if self.kind == "pretrained":
            return f"pretrained {self.spec}"
        return f"checkpoint {self.files[0] if self.files else self.spec}"

    def sha256(self) -> str | None:
        """sha256 over the weight files' bytes in order (None for random weights). Reads every
        byte: seconds for gpt2-xl, so it is computed on demand, not at load time."""
        if not self.files:
            return None
        h = hashlib.sha256()
        for name in self.files:
            with open(name, "rb") as f:
                while chunk := f.read(1 << 24):
                    h.update(chunk)
        return h.hexdigest()

    def to_dict(self, *, with_sha256: bool = False) -> dict[str, object]:
        d: dict[str, object] = {"kind": self.kind, "spec": self.spec, "files": list(self.files), "label": self.label}
        if self.seed is not None:
            d["seed"] = self.seed
        if with_sha256:
            d["sha256"] = self.sha256()
        return d


@dataclass
class LoadedModel:
    """A model in eval mode, on ``device`` in ``dtype``, with where its weights came from and the
    kernel choices it runs (``tuning``)."""

    model: GPT
    source: WeightsSource
    device: torch.device
    dtype: torch.dtype
    tuning: TuneReport

    @property
    def config(self) -> GPTConfig:
        return self.model.config

    @property
    def layout(self) -> str:
        """Storage of the block projections: ``out_in``, ``in_out`` or ``mixed`` (they differ)."""
        found = {p.layout for kind, p in self.model.kernel_plan().items() if kind != "lm_head"}
        return found.pop() if len(found) == 1 else "mixed"

    def describe(self) -> dict[str, object]:
        return {
            "weights": self.source.to_dict(),
            "config": self.config.to_dict(),
            "device": str(self.device),
            "dtype": dtype_name(self.dtype),
            "weight_layout": self.layout,
            "kernels": self.tuning.to_dict(),
            "num_parameters": self.config.num_parameters(),
            "weight_bytes": self.model.weight_bytes(),
        }


def load_model(
    spec: str,
    *,
    device: str = "cpu",
    dtype: str = "fp32",
    seed: int = 0,
    autotune: str = "cached",
    layout: StorageLayout | None = None,
) -> LoadedModel:
    """Resolve ``spec`` (see module docstring) into a ready model.

    ``autotune`` (off, cached, fresh) picks each projection's storage and kernel by measuring
    them here before the weights are allocated (``gpt2xl.autotune``). ``layout`` forces the
    storage of the block projections (a layout study); kernels that cannot read it fall back to
    ``F.linear``.

    Raises WeightsError (unknown spec, missing/corrupt files, key or shape mismatch, offline and
    uncached), DeviceError (no CUDA, unsupported dtype) or ConfigError (bad option values).
    """
    torch_device = resolve_device(device)
    torch_dtype = resolve_dtype(dtype)
    check_dtype_supported(torch_device, torch_dtype)
    mode = check_mode(autotune)
    if layout not in (None, "out_in", "in_out"):
        raise ConfigError(f"Unknown weight layout {layout!r}; use out_in or in_out (or leave it to the tuner).")

    def plan_for(config: GPTConfig) -> TuneReport:
        report = tune(config, device=torch_device, dtype=torch_dtype, mode=mode)
        return report if layout is None else replace(report, plan=_with_layout(report.plan, layout))

    if spec.startswith(RANDOM_PREFIX):
        config = get_preset(spec.removeprefix(RANDOM_PREFIX))
        tuning = plan_for(config)
        model = _empty_model(config, torch_device, torch_dtype, tuning.plan)
        init_random_(model, seed=seed)
        source = WeightsSource(kind="random", spec=spec, seed=seed)
    else:
        kind, where = _classify(spec)
        directory = _fetch_from_hub(where) if kind == "pretrained" else Path(where)
        config = _read_config(directory)
        tuning = plan_for(config)
        model, files = _load_hf_directory(directory, config, torch_device, torch_dtype, tuning.plan)
        source = WeightsSource(kind=kind, spec=spec, files=tuple(str(f) for f in files))
    model.eval().requires_grad_(False)
    model.apply_kernel_plan(tuning.plan)  # storage already matches: this only routes the kernels
    return LoadedModel(model=model, source=source, device=torch_device, dtype=torch_dtype, tuning=tuning)


def resolve_config(spec: str) -> GPTConfig | None:
    """The shape ``spec`` would load, without loading any weights, so options can be checked
    against the context length and memory first: the preset, the directory's config.json, or a
    hub model's cached config.json (None when it is not cached; nothing is downloaded).

    Raises what :func:`load_model` raises for an unknown spec or a malformed config.
    """
    if spec.startswith(RANDOM_PREFIX):
        return get_preset(spec.removeprefix(RANDOM_PREFIX))
    kind, where = _classify(spec)
    if kind == "checkpoint":
        return _read_config(Path(where))
    from huggingface_hub import try_to_load_from_cache

    cached = try_to_load_from_cache(where, "config.json")
    return _read_config(Path(cached).parent) if isinstance(cached, str) else None


def _classify(spec: str) -> tuple[Literal["checkpoint", "pretrained"], str]:
    """("checkpoint", resolved directory) or ("pretrained", hub repo id) for a non-random spec."""
    path = Path(spec).expanduser()
    if path.is_dir():
        return "checkpoint", str(path.resolve())
    if path.exists():
        raise WeightsError(f"{spec} is a file; pass the checkpoint directory that holds config.json.")
    if spec in HUB_ALIASES or _looks_like_hub_id(spec):
        return "pretrained", HUB_ALIASES.get(spec, spec)
    raise WeightsError(
        f"Unknown model {spec!r}: not a directory, not a hub name ({', '.join(HUB_ALIASES)}, "
        "or owner/name), and not random:<preset> (presets: gpt2, gpt2-medium, gpt2-large, "
        "gpt2-xl, tiny, tiny-xl)."
    )


def _with_layout(plan: KernelPlan, layout: StorageLayout) -> KernelPlan:
    """``plan`` with every block projection stored ``layout``; ``native`` needs ``out_in``."""
    def fit(kernel: str) -> str:
        return "linear" if kernel == "native" and layout != "out_in" else kernel

    return {
        kind: p if kind == "lm_head" else ProjectionPlan(layout=layout, decode=fit(p.decode), prefill=fit(p.prefill))
        for kind, p in plan.items()
    }


def _looks_like_hub_id(spec: str) -> bool:
    parts = spec.split("/")
    return len(parts) == 2 and all(parts) and not spec.startswith((".", "~"))


def _empty_model(config: GPTConfig, device: torch.device, dtype: torch.dtype, plan: KernelPlan) -> GPT:
    """A model with uninitialised storage, allocated once, directly in ``dtype``, in each
    projection's planned layout and on ``device`` (re-laying out filled weights later would cost
    a second pass over every byte), on transparent huge pages where the OS grants them."""
    with torch.device("meta"):
        model = GPT(config).to(dtype)
    model.to_empty(device=device)
    model.tie_weights()  # to_empty re-creates parameters per module, which unties them
    for kind, projs in model.projections_by_kind().items():
        if kind != "lm_head" and plan[kind].layout == "in_out":
            for lin in projs:
                storage = torch.empty(lin.in_features, lin.out_features, device=device, dtype=dtype)
                lin.weight = torch.nn.Parameter(storage.t(), requires_grad=False)
    for p in model.parameters():  # untouched so far: the first write faults in huge pages
        advise_huge_pages(p)
    return model


def _fetch_from_hub(repo_id: str) -> Path:
    """Config + weights of ``repo_id`` from the local HF cache, else downloaded; return the folder.

    The cache is tried first, with no network. The hub client retries an unreachable host for
    about half a minute, so when the hub's host does not even resolve we fail at once instead.
    """
    from huggingface_hub import constants

    try:
        return _hub_files(repo_id, local_files_only=True)
    except Exception as cache_miss:  # noqa: BLE001 - not cached: go online below, or report both
        reason = f"not in the local Hugging Face cache ({type(cache_miss).__name__})"
    if constants.HF_HUB_OFFLINE:
        reason += " and HF_HUB_OFFLINE is set"
    elif not _host_resolves(constants.ENDPOINT):
        reason += f" and {constants.ENDPOINT} is unreachable (offline)"
    else:
        try:
            return _hub_files(repo_id, local_files_only=False)
        except Exception as exc:  # noqa: BLE001 - unknown repo, auth, network: one message for the user
            reason += f" and the download failed ({type(exc).__name__}: {exc})"
    raise WeightsError(
        f"Cannot load {repo_id!r}: {reason}. Download it where the network allows "
        f"(`hf download {repo_id}`) and copy the HF cache here, pass a local checkpoint directory "
        f"as --model, or use random:<preset> for throughput work."
    )


def _hub_files(repo_id: str, *, local_files_only: bool) -> Path:
    from huggingface_hub import hf_hub_download

    config_path = Path(hf_hub_download(repo_id, "config.json", local_files_only=local_files_only))
    errors = []
    for name in ("model.safetensors", "pytorch_model.bin"):
        try:
            hf_hub_download(repo_id, name, local_files_only=local_files_only)
            return config_path.parent
        except Exception as exc:  # noqa: BLE001 - try the next file name; raise if none exists
            errors.append(exc)
    raise errors[0]


def _host_resolves(url: str) -> bool:
    import socket
    from urllib.parse import urlparse

    host = urlparse(url).hostname
    if host is None:
        return False
    try:
        socket.getaddrinfo(host, 443)
    except OSError:
        return False
    return True


def _read_config(directory: Path) -> GPTConfig:
    config_file = directory / "config.json"
    if not config_file.is_file():
        raise WeightsError(f"{directory} has no config.json; is it a Hugging Face GPT-2 checkpoint directory?")
    try:
        hf_config = json.loads(config_file.read_text())
    except json.JSONDecodeError as exc:
        raise WeightsError(f"{config_file} is not valid JSON ({exc}).") from exc
    return GPTConfig.from_hf_config(hf_config)


def _load_hf_directory(
    directory: Path, config: GPTConfig, device: torch.device, dtype: torch.dtype, plan: KernelPlan
) -> tuple[GPT, list[Path]]:
    files, tensors = _open_weight_files(directory)
    model = _empty_model(config, device, dtype, plan)
    _copy_hf_tensors(model, tensors, device=device, dtype=dtype, where=str(directory))
    return model, files


def _open_weight_files(directory: Path) -> tuple[list[Path], Iterator[tuple[str, torch.Tensor]]]:
    """The weight files of a checkpoint and an iterator of (key, tensor), one tensor at a time."""
    single = directory / "model.safetensors"
    index = directory / "model.safetensors.index.json"
    pickle = directory / "pytorch_model.bin"
    if single.is_file():
        files = [single]
    elif index.is_file():
        try:
            shard_names = sorted(set(json.loads(index.read_text())["weight_map"].values()))
        except (json.JSONDecodeError, KeyError) as exc:
            raise WeightsError(f"{index} is not a valid safetensors index ({exc}).") from exc
        files = [directory / name for name in shard_names]
        missing = [str(f) for f in files if not f.is_file()]
        if missing:
            raise WeightsError(f"{index} names shard files that are missing: {', '.join(missing)}.")
    elif pickle.is_file():
        return [pickle], _iter_pickle(pickle)
    else:
        raise WeightsError(
            f"{directory} has config.json but no weights: expected model.safetensors, "
            "model.safetensors.index.json or pytorch_model.bin."
        )
    return files, _iter_safetensors(files)


def _iter_safetensors(files: list[Path]) -> Iterator[tuple[str, torch.Tensor]]:
    from safetensors import SafetensorError, safe_open

    for path in files:
        try:
            with safe_open(str(path), framework="pt") as f:
                for key in f.keys():
                    yield key, f.get_tensor(key)
        except (SafetensorError, OSError, ValueError, RuntimeError) as exc:
            raise WeightsError(f"{path} is not a readable safetensors file ({exc}).") from exc


def _iter_pickle(path: Path) -> Iterator[tuple[str, torch.Tensor]]:
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - UnpicklingError, zip errors, truncation: all "corrupt"
        raise WeightsError(f"{path} cannot be read as a weights-only PyTorch checkpoint ({exc}).") from exc
    if not isinstance(state, dict):
        raise WeightsError(f"{path} does not hold a state dict.")
    yield from state.items()


def _copy_hf_tensors(
    model: GPT,
    tensors: Iterator[tuple[str, torch.Tensor]],
    *,
    device: torch.device,
    dtype: torch.dtype,
    where: str,
) -> None:
    """Copy checkpoint tensors into ``model``'s parameters, transposing Conv1D weights.

    Collects every problem (unexpected, missing, wrong shape) before raising, so one error message
    names them all.
    """
    params = dict(model.named_parameters())  # the tied lm_head appears once, as transformer.wte.weight
    expected = set(params)
    seen: set[str] = set()
    unexpected: list[str] = []
    bad_shapes: list[str] = []
    lm_head: torch.Tensor | None = None
    for raw_key, tensor in tensors:
        if raw_key.endswith(BUFFER_SUFFIXES):
            continue
        if raw_key == "lm_head.weight":
            lm_head = tensor
            continue
        key = raw_key if raw_key.startswith("transformer.") else f"transformer.{raw_key}"
        if key not in expected:
            unexpected.append(raw_key)
            continue
        param = params[key]
        conv1d = key.endswith(CONV1D_SUFFIXES)
        want = tuple(reversed(param.shape)) if conv1d else tuple(param.shape)
        if tuple(tensor.shape) != want:
            bad_shapes.append(f"{raw_key}: checkpoint {tuple(tensor.shape)}, expected {want}")
            continue
        value = tensor.to(device=device, dtype=dtype)
        with torch.no_grad():
            # Conv1D tensors are [in, out]: their transpose is the [out, in] parameter, whatever
            # storage layout the plan gave it.
            param.copy_(value.t() if conv1d else value)
        seen.add(key)
    missing = sorted(expected - seen)
    problems = []
    if missing:
        problems.append(f"missing keys: {', '.join(missing)}")
    if unexpected:
        problems.append(f"unexpected keys: {', '.join(sorted(unexpected))}")
    if bad_shapes:
        problems.append(f"shape mismatches: {'; '.join(bad_shapes)}")
    if problems:
        raise WeightsError(f"{where} does not match the GPT-2 shape in its config.json: {' | '.join(problems)}.")
    if lm_head is not None and not torch.equal(lm_head.to(device=device, dtype=dtype), params["transformer.wte.weight"]):
        raise WeightsError(f"{where} has an lm_head.weight that differs from wte.weight; GPT-2 ties them.")
    model.tie_weights()
