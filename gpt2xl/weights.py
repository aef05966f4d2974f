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

import errno
import hashlib
import json
import logging
import pickle
import re
import stat
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Literal

import torch

from gpt2xl.autotune import TuneReport, check_mode, tune
from gpt2xl.config import GPTConfig, get_preset
from gpt2xl.devices import check_dtype_supported, dtype_name, resolve_device, resolve_dtype
from gpt2xl.errors import ConfigError, WeightsError
from gpt2xl.hugepages import advise_huge_pages
from gpt2xl.model import GPT, Kernel, KernelPlan, ProjectionPlan, StorageLayout, init_random_
from gpt2xl.validation import check_memory

HUB_ALIASES: dict[str, str] = {
    "gpt2": "openai-community/gpt2",
    "gpt2-medium": "openai-community/gpt2-medium",
    "gpt2-large": "openai-community/gpt2-large",
    "gpt2-xl": "openai-community/gpt2-xl",
}
CONV1D_SUFFIXES = ("attn.c_attn.weight", "attn.c_proj.weight", "mlp.c_fc.weight", "mlp.c_proj.weight")
BUFFER_SUFFIXES = (".attn.bias", ".attn.masked_bias")  # causal-mask buffers of old checkpoints
RANDOM_PREFIX = "random:"
KEYS_SHOWN = 3  # keys a mismatch message names of each kind; the rest are counted
HUB_PROBE_TIMEOUT_S = 1.5  # an offline resolver can take 5 s or more per attempt to give up


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

    def provenance(self, *, hash_weights: bool = True) -> dict[str, object]:
        """Which model produced a result, in the one shape every result file records (generate's
        ``--json``, ``eval.json``, ``bench.json``): ``label`` (human-readable, says RANDOM for
        random weights), ``kind`` (pretrained, checkpoint or random), ``spec`` (what the user
        typed), ``files`` (weight files read), ``sha256`` (over those files' bytes; None for
        random weights, and without ``hash_weights``), ``seed`` (random weights only, else None),
        ``config``, ``device``, ``dtype`` and ``num_parameters``. Hashing reads every weight byte,
        about a second per GB, so ``generate`` skips it."""
        return {
            "label": self.source.label,
            "kind": self.source.kind,
            "spec": self.source.spec,
            "files": list(self.source.files),
            "sha256": self.source.sha256() if hash_weights else None,
            "seed": self.source.seed,
            "config": self.config.to_dict(),
            "device": str(self.device),
            "dtype": dtype_name(self.dtype),
            "num_parameters": self.config.num_parameters(),
        }

    def describe(self, *, hash_weights: bool = False) -> dict[str, object]:
        """:meth:`provenance` plus how the model runs here: storage layout, kernel choices and
        the bytes a decode step streams."""
        return {
            **self.provenance(hash_weights=hash_weights),
            "weight_layout": self.layout,
            "kernels": self.tuning.to_dict(),
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

    Raises WeightsError (unknown spec, missing, unreadable or corrupt files, key or shape mismatch,
    shards outside the checkpoint, offline and uncached), DeviceError (no CUDA, unsupported dtype)
    or ConfigError (bad option values, a malformed config.json, weights larger than the free
    memory), each with a one-line message; the memory check runs before anything is allocated.
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

    def fits(config: GPTConfig) -> GPTConfig:
        check_memory(
            config.num_parameters() * torch_dtype.itemsize,
            device=str(torch_device),
            what=f"The weights of {spec} ({config.num_parameters():,} parameters in {dtype_name(torch_dtype)})",
            hint="use a smaller model or a 2-byte --dtype, or free memory.",
        )
        return config

    if spec.startswith(RANDOM_PREFIX):
        config = fits(get_preset(spec.removeprefix(RANDOM_PREFIX)))
        tuning = plan_for(config)
        model = _empty_model(config, torch_device, torch_dtype, tuning.plan)
        init_random_(model, seed=seed)
        source = WeightsSource(kind="random", spec=spec, seed=seed)
    else:
        kind, where = _classify(spec)
        directory = _fetch_from_hub(where) if kind == "pretrained" else Path(where)
        config = fits(_read_config(directory))
        files, tensors = _open_weight_files(directory, root=_checkpoint_root(directory))
        tuning = plan_for(config)
        model = _empty_model(config, torch_device, torch_dtype, tuning.plan)
        _copy_hf_tensors(model, tensors, device=torch_device, dtype=torch_dtype, where=str(directory))
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
    found = _kind_of(path)
    if found == "dir":
        return "checkpoint", str(path.resolve())
    if found == "file":
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
    def fit(kernel: Kernel) -> Kernel:
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
    about half a minute, so when the hub's host cannot be reached within ``HUB_PROBE_TIMEOUT_S``
    we fail at once instead. The client's own warnings and log lines are kept off stderr: the one
    line of the WeightsError says what happened.
    """
    from huggingface_hub import constants
    from huggingface_hub.utils import logging as hub_logging

    verbosity = hub_logging.get_verbosity()
    hub_logging.set_verbosity(logging.ERROR)
    try:
        return _fetch_quietly(repo_id, offline=constants.HF_HUB_OFFLINE, endpoint=constants.ENDPOINT)
    finally:
        hub_logging.set_verbosity(verbosity)


def _fetch_quietly(repo_id: str, *, offline: bool, endpoint: str) -> Path:
    try:
        return _hub_files(repo_id, local_files_only=True)
    except Exception as cache_miss:  # noqa: BLE001 - not cached: go online below, or report both
        reason = f"not in the local Hugging Face cache ({type(cache_miss).__name__})"
    if offline:
        reason += " and HF_HUB_OFFLINE is set"
    elif not _host_reachable(endpoint):
        reason += f" and {endpoint} is unreachable (offline)"
    else:
        try:
            return _hub_files(repo_id, local_files_only=False)
        except Exception as exc:  # noqa: BLE001 - unknown repo, auth, network: one message for the user
            reason += f" and the download failed ({type(exc).__name__}: {_first_line(exc)})"
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


def _host_reachable(url: str, *, timeout_s: float = HUB_PROBE_TIMEOUT_S) -> bool:
    """Whether ``url``'s host resolves and accepts a TCP connection within ``timeout_s``. The
    probe runs in a daemon thread: getaddrinfo has no timeout of its own, and an unanswered
    resolver (or a firewall that drops packets) makes the hub client wait and retry for ~30 s."""
    import socket
    import threading
    from urllib.parse import urlparse

    parsed = urlparse(url)
    host = parsed.hostname
    if host is None:
        return False
    port = parsed.port or (80 if parsed.scheme == "http" else 443)
    reached = threading.Event()

    def probe() -> None:
        try:
            with socket.create_connection((host, port), timeout=timeout_s):
                reached.set()
        except OSError:
            return  # unresolvable or unreachable: the event stays unset

    threading.Thread(target=probe, name="gpt2xl-hub-probe", daemon=True).start()
    return reached.wait(timeout_s)


def _checkpoint_root(directory: Path) -> Path:
    """The folder a checkpoint's shards must stay in: the directory itself, or for a snapshot in
    the Hugging Face cache (``models--owner--name/snapshots/<commit>``, whose files are symlinks
    into ``models--owner--name/blobs``) the repository's cache folder."""
    repo = directory.parent.parent
    if directory.parent.name == "snapshots" and repo.name.startswith("models--") and (repo / "blobs").is_dir():
        return repo
    return directory


def _read_error(path: Path, exc: OSError) -> WeightsError:
    """One sentence for a checkpoint file or folder that cannot be read, saying why."""
    if exc.errno in (errno.EACCES, errno.EPERM):
        return WeightsError(
            f"Cannot read {path}: permission denied; make it readable for this user (chmod / chown) "
            "or copy the checkpoint to a folder you can read."
        )
    if exc.errno == errno.EISDIR:
        return WeightsError(f"Cannot read {path}: it is a directory, not a file; fix the checkpoint's layout.")
    reason = exc.strerror or type(exc).__name__
    return WeightsError(f"Cannot read {path}: {reason[0].lower()}{reason[1:]}; check the checkpoint's files.")


def _kind_of(path: Path) -> Literal["file", "dir"] | None:
    """``"file"``, ``"dir"`` or None (nothing there). A path that exists but cannot be looked at
    (a folder on the way without permission) is a WeightsError saying so, not "no such file"."""
    try:
        mode = path.stat().st_mode
    except (FileNotFoundError, NotADirectoryError):
        return None
    except OSError as exc:
        raise _read_error(path, exc) from exc
    return "dir" if stat.S_ISDIR(mode) else "file"


def _check_readable(path: Path) -> None:
    """WeightsError unless ``path`` is a file this process may open for reading."""
    try:
        with open(path, "rb"):
            pass
    except OSError as exc:
        raise _read_error(path, exc) from exc


def _first_line(exc: BaseException, limit: int = 200) -> str:
    """The first line of a library's exception text, shortened, so messages stay one line."""
    text = str(exc).strip()
    line = text.splitlines()[0] if text else type(exc).__name__
    return line if len(line) <= limit else line[: limit - 1] + "…"


def _read_config(directory: Path) -> GPTConfig:
    config_file = directory / "config.json"
    try:
        text = config_file.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise WeightsError(
            f"{directory} has no config.json; is it a Hugging Face GPT-2 checkpoint directory?"
        ) from None
    except OSError as exc:
        raise _read_error(config_file, exc) from exc
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{config_file} is not UTF-8 text ({exc.reason}); pass a GPT-2 config.json.") from exc
    try:
        hf_config = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ConfigError(f"{config_file} is not valid JSON ({exc}); fix or replace the file.") from exc
    return GPTConfig.from_hf_config(hf_config, source=str(config_file))


def _open_weight_files(directory: Path, *, root: Path) -> tuple[list[Path], Iterator[tuple[str, torch.Tensor]]]:
    """The weight files of a checkpoint and an iterator of (key, tensor), one tensor at a time.

    Every file is checked readable here, before the model is allocated. The shards of a sharded
    checkpoint must resolve (symlinks followed) inside ``root``: an index that names ``/etc/…``,
    ``../x`` or a symlink out of the folder is refused, so a downloaded index cannot make us read
    files elsewhere.
    """
    single = directory / "model.safetensors"
    index = directory / "model.safetensors.index.json"
    pickled = directory / "pytorch_model.bin"
    found = {path: _kind_of(path) for path in (single, index, pickled)}
    for path, kind in found.items():
        if kind == "dir":
            raise WeightsError(f"{path} is a directory, not a weights file; fix the checkpoint's layout.")
    if found[single]:
        files = [single]
    elif found[index]:
        files = [_check_inside(name, index=index, root=root) for name in _shard_names(index)]
        missing = [str(f) for f in files if _kind_of(f) is None]
        if missing:
            raise WeightsError(f"{index} names shard files that are missing: {_some(missing)}; download them.")
    elif found[pickled]:
        _check_readable(pickled)
        return [pickled], _iter_pickle(pickled)
    else:
        raise WeightsError(
            f"{directory} has config.json but no weights: expected model.safetensors, "
            "model.safetensors.index.json or pytorch_model.bin."
        )
    for path in files:
        _check_readable(path)
    return files, _iter_safetensors(files)


def _shard_names(index: Path) -> list[str]:
    """The distinct shard file names that a safetensors index maps its tensors to."""
    try:
        doc = json.loads(index.read_text(encoding="utf-8"))
    except OSError as exc:
        raise _read_error(index, exc) from exc
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise WeightsError(f"{index} is not valid JSON ({_first_line(exc)}); download the checkpoint again.") from exc
    weight_map = doc.get("weight_map") if isinstance(doc, dict) else None
    if not isinstance(weight_map, dict) or not weight_map:
        raise WeightsError(
            f'{index} needs a non-empty "weight_map" object of tensor name -> shard file; '
            "download the checkpoint again."
        )
    for name in weight_map.values():
        if not isinstance(name, str) or not name:
            raise WeightsError(
                f"{index} maps a tensor to {name!r}, not a shard file name; download the checkpoint again."
            )
    return sorted(set(weight_map.values()))


def _check_inside(name: str, *, index: Path, root: Path) -> Path:
    """The path of the shard ``name`` (as ``index`` writes it); WeightsError when the name is
    absolute, climbs out with ``..``, or resolves (through symlinks) outside ``root``."""
    relative = Path(name)
    path = index.parent / relative
    if relative.is_absolute() or ".." in relative.parts or not path.resolve().is_relative_to(root.resolve()):
        raise WeightsError(
            f"{index} names the shard {name!r}, which lies outside the checkpoint directory {index.parent} "
            "(symlinks followed); refused: shard files must sit inside the checkpoint directory."
        )
    return path


def _iter_safetensors(files: list[Path]) -> Iterator[tuple[str, torch.Tensor]]:
    from safetensors import SafetensorError, safe_open

    for path in files:
        try:
            with safe_open(str(path), framework="pt") as f:
                for key in f.keys():  # noqa: SIM118 - safe_open is not iterable
                    yield key, f.get_tensor(key)
        except OSError as exc:
            raise _read_error(path, exc) from exc
        except (SafetensorError, ValueError, RuntimeError) as exc:
            raise WeightsError(
                f"{path} is not a readable safetensors file ({_first_line(exc)}); download it again."
            ) from exc


def _iter_pickle(path: Path) -> Iterator[tuple[str, torch.Tensor]]:
    """The tensors of a ``pytorch_model.bin``, unpickled with ``weights_only=True`` only."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        refused = re.search(r"GLOBAL (\S+) was not an allowed global", str(exc))
        if refused:
            raise WeightsError(
                f"{path} holds non-tensor Python objects ({refused.group(1)}) and is refused for safety: only "
                "tensors are unpickled; convert the checkpoint to model.safetensors where it came from."
            ) from exc
        raise WeightsError(
            f"{path} is not a readable PyTorch checkpoint (corrupt or truncated); download it again."
        ) from exc
    except OSError as exc:
        raise _read_error(path, exc) from exc
    except Exception as exc:  # zip and storage errors of a damaged file (RuntimeError, EOFError…): "corrupt"
        raise WeightsError(
            f"{path} is not a readable PyTorch checkpoint ({_first_line(exc)}); download it again."
        ) from exc
    if not isinstance(state, dict):
        raise WeightsError(f"{path} does not hold a state dict of tensors; pass a GPT-2 checkpoint.")
    for key, value in state.items():
        if not isinstance(key, str) or not isinstance(value, torch.Tensor):
            raise WeightsError(f"{path} holds {key!r}, which is not a named tensor; pass a GPT-2 checkpoint.")
        yield key, value


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
        seen.add(key)  # present, whatever its shape: a wrong shape is not also "missing"
        if tuple(tensor.shape) != want:
            bad_shapes.append(f"{raw_key}: checkpoint {tuple(tensor.shape)}, expected {want}")
            continue
        value = tensor.to(device=device, dtype=dtype)
        with torch.no_grad():
            # Conv1D tensors are [in, out]: their transpose is the [out, in] parameter, whatever
            # storage layout the plan gave it.
            param.copy_(value.t() if conv1d else value)
    missing = sorted(expected - seen)
    problems = []
    if missing:
        problems.append(f"{_count(missing, 'missing key')} ({_some(missing)})")
    if unexpected:
        problems.append(f"{_count(unexpected, 'unexpected key')} ({_some(sorted(unexpected))})")
    if bad_shapes:
        problems.append(f"{_count(bad_shapes, 'key')} of another shape (the first, {bad_shapes[0]})")
    if problems:
        raise WeightsError(
            f"{where} does not match the GPT-2 shape in its config.json: {'; '.join(problems)}; "
            "check that config.json belongs to these weights."
        )
    wte = params["transformer.wte.weight"]
    if lm_head is not None and not torch.equal(lm_head.to(device=device, dtype=dtype), wte):
        raise WeightsError(f"{where} has an lm_head.weight that differs from wte.weight; GPT-2 ties them.")
    model.tie_weights()


def _count(items: list[str], noun: str) -> str:
    return f"{len(items)} {noun}{'' if len(items) == 1 else 's'}"


def _some(keys: list[str]) -> str:
    """The first ``KEYS_SHOWN`` of ``keys``, and how many more there are."""
    more = len(keys) - KEYS_SHOWN
    return ", ".join(keys[:KEYS_SHOWN]) + (f" and {more} more" if more > 0 else "")
