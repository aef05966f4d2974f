"""Evaluation corpora: WikiText-2 (raw, test), OpenAI's LAMBADA (test) and Tiny Shakespeare.

Two routes lead to the same bytes, and both end in the same sha256 check:

1. A data directory (``data_dir=`` or ``$GPT2XL_DATA_DIR``) holding the canonical files, laid out as
   in ``../shared/data`` (``wikitext-2-raw/wiki.test.raw``, ``lambada/lambada_test.jsonl``,
   ``tinyshakespeare/input.txt``). Nothing is ever copied into this repository; files are only read.
2. Without a directory, the Hugging Face ``datasets`` library. Its rows are turned back into the
   canonical file's bytes (see :class:`DatasetSpec` for each rebuild rule) and checked against the
   same pinned sha256, so a number computed through either route is computed on identical text.

A directory that is given but wrong is an error, never a silent fall back to the download: the
user asked for those files.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import socket
import threading
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from types import MappingProxyType
from urllib.parse import urlparse

from gpt2xl.errors import ConfigError, DataError
from gpt2xl.tokenizer import decode, encode

DATA_DIR_ENV = "GPT2XL_DATA_DIR"

# nanoGPT's split: the first 90% of the token stream trains, the rest validates.
TINYSHAKESPEARE_TRAIN_FRACTION = 0.9

_SHA256_RE = re.compile(r"[0-9a-f]{64}")


# --------------------------------------------------------------------------------------------
# Rebuilding the canonical file from `datasets` rows. Each function receives one list of row
# texts per split named in the spec, in that order, and returns the file's exact bytes.
# --------------------------------------------------------------------------------------------


def _wikitext_file_from_rows(splits: list[list[str]]) -> bytes:
    # The builder (huggingface/datasets, datasets/wikitext/wikitext.py, whose rows the Parquet
    # conversion kept) yields one row per line of wiki.test.raw, newline included, except that a
    # blank line (" \n" in this file, 1,467 of them) becomes "". So "".join(rows) is NOT the file:
    # it is 2,934 bytes short. Putting " \n" back for the empty rows restores it byte for byte.
    (rows,) = splits
    return "".join(row or " \n" for row in rows).encode("utf-8")


def _lambada_file_from_rows(splits: list[list[str]]) -> bytes:
    # lambada_test.jsonl is exactly json.dumps({"text": ...}) (ASCII escapes, ", " and ": "
    # separators) plus "\n" per row; checked against the pinned file.
    (rows,) = splits
    return "".join(json.dumps({"text": text}) + "\n" for text in rows).encode("utf-8")


def _tinyshakespeare_file_from_rows(splits: list[list[str]]) -> bytes:
    # The builder (datasets/tiny_shakespeare/tiny_shakespeare.py) cuts input.txt by character
    # index at 90% and 95% into one-row train/validation/test splits; concatenating them in
    # that order gives back input.txt (ASCII, so characters are bytes).
    return "".join(text for rows in splits for text in rows).encode("utf-8")


@dataclass(frozen=True, kw_only=True)
class DatasetSpec:
    """Where one corpus lives and how to recognise it.

    ``relative_path`` is a POSIX path inside a data directory; ``sha256`` and ``num_bytes`` are
    those of that file (from ``../shared/data/README.md``). ``hf_path``/``hf_name``/``hf_splits``
    are the ``datasets.load_dataset`` arguments for the online route, and ``rebuild`` turns the
    rows of those splits back into the file's bytes so that the same hash applies.
    """

    name: str
    relative_path: str
    sha256: str
    num_bytes: int
    hf_path: str
    hf_name: str | None
    hf_splits: tuple[str, ...]
    rebuild: Callable[[list[list[str]]], bytes]
    description: str

    def __post_init__(self) -> None:
        if not self.name:
            raise ConfigError("DatasetSpec.name must be a non-empty string.")
        rel = PurePosixPath(self.relative_path)
        if rel.is_absolute() or ".." in rel.parts or not rel.parts:
            raise ConfigError(
                f"DatasetSpec.relative_path must be a relative path inside the data directory, "
                f"got {self.relative_path!r}."
            )
        if not _SHA256_RE.fullmatch(self.sha256):
            raise ConfigError(f"DatasetSpec.sha256 must be 64 lowercase hex digits, got {self.sha256!r}.")
        if self.num_bytes <= 0:
            raise ConfigError(f"DatasetSpec.num_bytes must be positive, got {self.num_bytes!r}.")
        if not self.hf_splits:
            raise ConfigError("DatasetSpec.hf_splits must name at least one split.")

    @property
    def datasets_source(self) -> str:
        """``datasets:<path>[:<config>]:<split>[+<split>...]``, the ``source`` of a downloaded corpus."""
        config = f":{self.hf_name}" if self.hf_name else ""
        return f"datasets:{self.hf_path}{config}:{'+'.join(self.hf_splits)}"


DATASETS: Mapping[str, DatasetSpec] = MappingProxyType(
    {
        "wikitext2": DatasetSpec(
            name="wikitext2",
            relative_path="wikitext-2-raw/wiki.test.raw",
            sha256="173c87a53759e0201f33e0ccf978e510c2042d7f2cb78229d9a50d79b9e7dd08",
            num_bytes=1_290_590,
            # "wikitext" on the Hub now redirects to Salesforce/wikitext (Parquet, same rows).
            hf_path="Salesforce/wikitext",
            hf_name="wikitext-2-raw-v1",
            hf_splits=("test",),
            rebuild=_wikitext_file_from_rows,
            description="WikiText-2 raw test split (Merity et al. 2016), one document: the file as-is",
        ),
        "lambada": DatasetSpec(
            name="lambada",
            relative_path="lambada/lambada_test.jsonl",
            sha256="4aa8d02cd17c719165fc8a7887fddd641f43fcafa4b1c806ca8abc31fabdb226",
            num_bytes=1_819_752,
            hf_path="EleutherAI/lambada_openai",
            hf_name="default",
            hf_splits=("test",),
            rebuild=_lambada_file_from_rows,
            description=(
                "LAMBADA test set, OpenAI's detokenised version (Paperno et al. 2016), one document per passage"
            ),
        ),
        "tinyshakespeare": DatasetSpec(
            name="tinyshakespeare",
            relative_path="tinyshakespeare/input.txt",
            sha256="86c4e6aa9db7c042ec79f339dcb96d42b0075e16b8fc2e86bf0ca57e2dc565ed",
            num_bytes=1_115_394,
            hf_path="karpathy/tiny_shakespeare",
            hf_name=None,
            hf_splits=("train", "validation", "test"),
            rebuild=_tinyshakespeare_file_from_rows,
            description="Tiny Shakespeare (char-rnn input.txt), one document: the file as-is",
        ),
    }
)

DATASET_NAMES: tuple[str, ...] = tuple(DATASETS)


def get_spec(name: str) -> DatasetSpec:
    """The registry entry for ``name``; ConfigError listing the known names otherwise."""
    spec = DATASETS.get(name)
    if spec is None:
        raise ConfigError(f"Unknown dataset {name!r}: choose one of {', '.join(DATASET_NAMES)}.")
    return spec


def default_data_dir() -> Path | None:
    """``$GPT2XL_DATA_DIR`` as a Path, or None when it is unset or empty."""
    value = os.environ.get(DATA_DIR_ENV, "").strip()
    return Path(value) if value else None


# --------------------------------------------------------------------------------------------
# Corpus
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True, kw_only=True)
class Corpus:
    """One loaded corpus.

    ``documents``: wikitext2 and tinyshakespeare hold one document, the whole file as-is (no
    newline translation, trailing newline kept); lambada holds one document per passage (5,153).
    ``source`` is ``dir:<absolute file path>`` or ``datasets:<id>`` (see
    :attr:`DatasetSpec.datasets_source`). ``sha256`` is the verified hash of the file, or of the
    file rebuilt from ``datasets`` rows; None only for corpora built by hand (tests, ad-hoc text).
    """

    name: str
    documents: tuple[str, ...]
    source: str
    sha256: str | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name:
            raise ConfigError(f"Corpus.name must be a non-empty string, got {self.name!r}.")
        if not isinstance(self.documents, tuple) or not self.documents:
            raise ConfigError("Corpus.documents must be a non-empty tuple of strings.")
        if not all(isinstance(doc, str) for doc in self.documents):
            raise ConfigError("Corpus.documents must hold only strings.")
        if not isinstance(self.source, str) or not self.source:
            raise ConfigError(f"Corpus.source must be a non-empty string, got {self.source!r}.")
        if self.sha256 is not None and not _SHA256_RE.fullmatch(self.sha256):
            raise ConfigError(f"Corpus.sha256 must be None or 64 lowercase hex digits, got {self.sha256!r}.")

    @property
    def text(self) -> str:
        """The whole corpus as one string: the single document unchanged, or several documents
        joined with ``"\\n\\n"`` (the convention of the Hugging Face perplexity guide). Note that
        LAMBADA passages themselves contain blank lines, so the join cannot be undone."""
        if len(self.documents) == 1:
            return self.documents[0]
        return "\n\n".join(self.documents)


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _parse(spec: DatasetSpec, data: bytes, origin: str) -> tuple[str, ...]:
    """Documents of a verified file's bytes; ``origin`` names the file in error messages."""
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as error:
        raise DataError(f"{origin} is not valid UTF-8 ({error}); replace it with the original file.") from error
    if spec.name != "lambada":
        return (text,)
    documents = []
    # "\n" only: str.splitlines() would also cut at \x1c, \x85, \u2028... inside a line.
    for number, line in enumerate(text.split("\n"), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as error:
            raise DataError(f"{origin} line {number} is not valid JSON ({error}).") from error
        if not isinstance(row, dict) or not isinstance(row.get("text"), str):
            raise DataError(f'{origin} line {number} is not an object with a string "text" field.')
        documents.append(row["text"])
    if not documents:
        raise DataError(f"{origin} holds no LAMBADA passages.")
    return tuple(documents)


def _hint(spec: DatasetSpec) -> str:
    return f"pass --data-dir or set {DATA_DIR_ENV} to a folder holding {spec.relative_path}, e.g. ../shared/data"


def _load_from_dir(spec: DatasetSpec, directory: Path) -> Corpus:
    path = (directory / spec.relative_path).resolve()
    try:
        data = path.read_bytes()
    except FileNotFoundError as error:
        raise DataError(
            f"Cannot load {spec.name!r}: {path} does not exist; the data directory {directory} must "
            f"hold {spec.relative_path} (laid out as ../shared/data)."
        ) from error
    except OSError as error:
        raise DataError(f"Cannot load {spec.name!r}: reading {path} failed ({error}).") from error
    actual = _sha256(data)
    if actual != spec.sha256:
        raise DataError(
            f"Cannot load {spec.name!r}: {path} does not match its pinned sha256 "
            f"(expected {spec.sha256}, got {actual}, {len(data):,} bytes instead of "
            f"{spec.num_bytes:,}); restore the original file."
        )
    return Corpus(name=spec.name, documents=_parse(spec, data, str(path)), source=f"dir:{path}", sha256=actual)


def _short(error: BaseException) -> str:
    first_line = (str(error).strip().splitlines() or [""])[0]
    reason = f"{type(error).__name__}: {first_line}" if first_line else type(error).__name__
    return reason if len(reason) <= 300 else reason[:297] + "..."


# Values huggingface_hub and datasets read as "true" in HF_HUB_OFFLINE / HF_DATASETS_OFFLINE.
_TRUE_VALUES = frozenset({"1", "ON", "YES", "TRUE"})
_OFFLINE_VARS = ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE")

# How long the DNS probe of the hub may take. Without a resolver the lookup fails at once; with an
# unreachable one it can hang for several resolver timeouts, and the whole failure must stay
# under 3 s.
_DNS_PROBE_S = 1.5

# The loggers that print one warning per retry of a failed request (a dozen lines offline); their
# failure ends up in our one DataError, with its reason.
_HUB_LOGGERS = ("datasets", "huggingface_hub")


def _offline_requested() -> bool:
    return any(os.environ.get(name, "").strip().upper() in _TRUE_VALUES for name in _OFFLINE_VARS)


def _host_resolves(url: str, *, timeout_s: float) -> bool:
    """Whether ``url``'s host resolves within ``timeout_s`` (the lookup runs in a daemon thread,
    so a hanging resolver cannot hold the process)."""
    host = urlparse(url).hostname
    if host is None:
        return False
    resolved: list[bool] = []

    def lookup() -> None:
        try:
            socket.getaddrinfo(host, 443)
        except OSError:
            resolved.append(False)
        else:
            resolved.append(True)

    thread = threading.Thread(target=lookup, daemon=True, name="gpt2xl-dns-probe")
    thread.start()
    thread.join(timeout_s)
    return bool(resolved) and resolved[0]


@contextmanager
def _quiet_hub_loggers() -> Iterator[None]:
    """Silence the retry warnings of ``datasets`` and ``huggingface_hub`` for one attempt."""
    loggers = [logging.getLogger(name) for name in _HUB_LOGGERS]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.setLevel(logging.CRITICAL)
    try:
        yield
    finally:
        for logger, level in zip(loggers, levels, strict=True):
            logger.setLevel(level)


def _load_from_datasets(spec: DatasetSpec) -> Corpus:
    prefix = f"Cannot load {spec.name!r}: no data directory given ({_hint(spec)}) and the `datasets`"
    if not _offline_requested():
        # Offline, `datasets` retries the unreachable hub for ~25 s, a warning per retry. When
        # its host does not even resolve, fail now; HF_DATASETS_OFFLINE=1 still reads a copy
        # that `datasets` cached earlier (offline mode goes straight to its cache).
        from huggingface_hub import constants

        if not _host_resolves(constants.ENDPOINT, timeout_s=_DNS_PROBE_S):
            raise DataError(
                f"{prefix} download cannot start: {constants.ENDPOINT} does not resolve (offline?); set "
                "HF_DATASETS_OFFLINE=1 to use a copy `datasets` cached before."
            )
    try:
        import datasets  # lazy: heavy import, and only this route needs it
    except ImportError as error:
        raise DataError(f"{prefix} package is not installed ({_short(error)}).") from error
    splits: list[list[str]] = []
    try:
        with _quiet_hub_loggers():
            for split in spec.hf_splits:
                rows = datasets.load_dataset(spec.hf_path, spec.hf_name, split=split)
                splits.append([str(text) for text in rows["text"]])
    # `datasets` signals "cannot get it" with many unrelated types (ConnectionError,
    # FileNotFoundError, DatasetNotFoundError, HfHubHTTPError, ValueError...); every one of them
    # means this route failed, and the reason is carried into the message and the chain.
    except Exception as error:
        raise DataError(f"{prefix} download of {spec.datasets_source} failed ({_short(error)}).") from error
    data = spec.rebuild(splits)
    actual = _sha256(data)
    if actual != spec.sha256:
        raise DataError(
            f"{prefix} copy ({spec.datasets_source}) does not rebuild the pinned file "
            f"{spec.relative_path} (sha256 expected {spec.sha256}, got {actual}); "
            "use the verified offline copy through a data directory."
        )
    return Corpus(
        name=spec.name,
        documents=_parse(spec, data, spec.datasets_source),
        source=spec.datasets_source,
        sha256=actual,
    )


def load_corpus(name: str, *, data_dir: str | Path | None = None) -> Corpus:
    """Load corpus ``name`` (one of :data:`DATASET_NAMES`), verified against its pinned sha256.

    Route: ``data_dir``, else ``$GPT2XL_DATA_DIR``; when either is given the file is read from
    there and nothing else is tried. A missing file, an unreadable one, or a sha256 mismatch
    (the message names the file and both hashes) raises DataError. With no directory the
    ``datasets`` library is tried (imported lazily); if that fails too, ONE DataError names both
    routes and the download's reason. When the hub's host does not resolve (offline), that error
    comes at once, without trying; with ``HF_HUB_OFFLINE=1`` or ``HF_DATASETS_OFFLINE=1``
    ``datasets`` reads only its own cache, which also fails fast.

    Raises ConfigError for an unknown name or an empty ``data_dir`` string.
    """
    spec = get_spec(name)
    if isinstance(data_dir, str) and not data_dir.strip():
        raise ConfigError("data_dir must be a directory path or None, got an empty string.")
    directory = Path(data_dir) if data_dir is not None else default_data_dir()
    if directory is not None:
        return _load_from_dir(spec, directory.expanduser())
    return _load_from_datasets(spec)


# --------------------------------------------------------------------------------------------
# Evaluation split
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True, kw_only=True)
class EvalSplit:
    """The text a perplexity is measured on, its GPT-2 token ids, and its normalisers.

    ``num_words`` is ``len(text.split())``: whitespace-separated words of the original text
    (lm-evaluation-harness normalises word perplexity by the original document's words; it
    counts with ``re.split(r"\\s+", doc)``, which adds one empty "word" per leading or trailing
    whitespace run). ``num_bytes`` is ``len(text.encode("utf-8"))``, the bits-per-byte
    denominator. ``token_ids`` are the ids scored; for tinyshakespeare they are a slice of the
    whole file's ids, which re-encoding ``text`` need not reproduce at the cut.
    """

    corpus: str
    text: str
    token_ids: tuple[int, ...]
    num_words: int
    num_bytes: int
    description: str

    def __post_init__(self) -> None:
        if not isinstance(self.token_ids, tuple):
            raise ConfigError("EvalSplit.token_ids must be a tuple of ints.")
        for field_name in ("num_words", "num_bytes"):
            value = getattr(self, field_name)
            if not isinstance(value, int) or value < 0:
                raise ConfigError(f"EvalSplit.{field_name} must be a non-negative integer, got {value!r}.")

    @property
    def num_tokens(self) -> int:
        return len(self.token_ids)


def _split_of(corpus: Corpus, text: str, token_ids: list[int], description: str) -> EvalSplit:
    return EvalSplit(
        corpus=corpus.name,
        text=text,
        token_ids=tuple(token_ids),
        num_words=len(text.split()),
        num_bytes=len(text.encode("utf-8")),
        description=description,
    )


def eval_split(corpus: Corpus) -> EvalSplit:
    """The evaluation part of ``corpus``, tokenised with GPT-2's BPE.

    - wikitext2: the whole test file as-is (286,221 tokens, 241,211 words).
    - tinyshakespeare: nanoGPT's validation split. The whole file is encoded (338,025 tokens),
      cut at ``int(0.9 * len(ids))`` = 304,222, and the last 33,803 ids are kept; ``text`` is
      their decoding. This is the split ``models/gpt2-tiny-shakespeare`` was validated on.
    - lambada: the passages joined as in :attr:`Corpus.text`; perplexity over independent
      passages is a secondary use (LAMBADA is scored per target word, see
      :func:`lambada_examples`).

    Tokenising the whole of wikitext2 takes about a second. Raises ConfigError for a corpus
    whose name is not in the registry.
    """
    get_spec(corpus.name)
    if corpus.name == "tinyshakespeare":
        ids = encode(corpus.text)
        cut = int(TINYSHAKESPEARE_TRAIN_FRACTION * len(ids))
        tail = ids[cut:]
        return _split_of(
            corpus,
            decode(tail),
            tail,
            f"last {len(tail):,} of {len(ids):,} GPT-2 tokens (nanoGPT 90/10 split at token {cut:,})",
        )
    text = corpus.text
    if corpus.name == "wikitext2":
        description = "whole WikiText-2 raw test file as-is"
    else:
        description = f'{len(corpus.documents):,} LAMBADA passages joined with "\\n\\n"'
    return _split_of(corpus, text, encode(text), description)


# --------------------------------------------------------------------------------------------
# LAMBADA
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True, kw_only=True)
class LambadaExample:
    """One LAMBADA item: ``context + target`` is the passage; ``target`` is ``" " + last word``."""

    context: str
    target: str

    def __post_init__(self) -> None:
        if not self.target.startswith(" "):
            raise ConfigError(f"LambadaExample.target must start with a space, got {self.target!r}.")


def lambada_examples(corpus: Corpus) -> list[LambadaExample]:
    """Split each passage as lm-evaluation-harness's ``lambada_openai`` task does:
    ``context = " ".join(text.split(" ")[:-1])`` and ``target = " " + text.split(" ")[-1]``,
    i.e. on the last ASCII space (newlines inside a passage are not separators).

    Raises ConfigError for a corpus that is not lambada, DataError for a passage with no space.
    """
    if corpus.name != "lambada":
        raise ConfigError(f"lambada_examples needs the 'lambada' corpus, got {corpus.name!r}.")
    examples = []
    for index, text in enumerate(corpus.documents):
        context, space, last_word = text.rpartition(" ")
        if not space:
            raise DataError(f"LAMBADA passage {index} has no space to split its last word from: {text[:80]!r}.")
        examples.append(LambadaExample(context=context, target=" " + last_word))
    return examples
