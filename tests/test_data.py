"""Evaluation corpora: sha256-verified loading, the two routes, the eval splits, LAMBADA items.

The corpora are read from ``../shared/data`` beside the repository (never copied into it).
Expected counts come from ``../shared/data/README.md`` and
``../shared/models/gpt2-tiny-shakespeare/TRAINING.json``.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import subprocess
import sys
import types
from pathlib import Path

import pytest

from gpt2xl import data
from gpt2xl.data import (
    DATA_DIR_ENV,
    DATASETS,
    Corpus,
    default_data_dir,
    eval_split,
    lambada_examples,
    load_corpus,
)
from gpt2xl.errors import ConfigError, DataError
from gpt2xl.tokenizer import encode

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
REPO_ROOT = Path(__file__).resolve().parents[1]

needs_shared_data = pytest.mark.skipif(
    not SHARED_DATA.is_dir(), reason=f"the shared corpora are not checked out at {SHARED_DATA}"
)


@pytest.fixture(scope="module")
def corpora() -> dict[str, Corpus]:
    if not SHARED_DATA.is_dir():
        pytest.skip(f"the shared corpora are not checked out at {SHARED_DATA}")
    return {name: load_corpus(name, data_dir=SHARED_DATA) for name in DATASETS}


# Tokenising costs about a second per corpus: do it once per module.
@pytest.fixture(scope="module")
def wikitext_split(corpora: dict[str, Corpus]) -> data.EvalSplit:
    return eval_split(corpora["wikitext2"])


@pytest.fixture(scope="module")
def shakespeare_ids(corpora: dict[str, Corpus]) -> list[int]:
    return encode(corpora["tinyshakespeare"].text)


@pytest.fixture(scope="module")
def shakespeare_split(corpora: dict[str, Corpus]) -> data.EvalSplit:
    return eval_split(corpora["tinyshakespeare"])


@pytest.fixture
def no_data_dir_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(DATA_DIR_ENV, raising=False)


def _fake_datasets(monkeypatch: pytest.MonkeyPatch, load_dataset) -> list[tuple]:  # noqa: ANN001
    """Put a stand-in ``datasets`` module in sys.modules (the loader imports it lazily) and
    return the list of calls it receives. Offline mode is set, as for a copy `datasets` cached
    before, so that the loader asks the stand-in instead of failing on an unresolvable hub."""
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    calls: list[tuple] = []

    def recording_load_dataset(path, name=None, *, split):  # noqa: ANN001, ANN202
        calls.append((path, name, split))
        return load_dataset(path, name, split=split)

    module = types.ModuleType("datasets")
    module.load_dataset = recording_load_dataset  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "datasets", module)
    return calls


# ------------------------------------------------------------------------- loading from a directory


@needs_shared_data
@pytest.mark.parametrize(("name", "num_documents"), [("wikitext2", 1), ("lambada", 5153), ("tinyshakespeare", 1)])
def test_each_corpus_loads_from_the_shared_dir_with_its_sha256(
    corpora: dict[str, Corpus], name: str, num_documents: int
) -> None:
    corpus = corpora[name]
    spec = DATASETS[name]
    path = (SHARED_DATA / spec.relative_path).resolve()
    assert corpus.sha256 == spec.sha256 == hashlib.sha256(path.read_bytes()).hexdigest()
    assert corpus.source == f"dir:{path}"
    assert len(corpus.documents) == num_documents


@needs_shared_data
def test_single_document_corpora_are_the_files_as_is(corpora: dict[str, Corpus]) -> None:
    for name in ("wikitext2", "tinyshakespeare"):
        raw = (SHARED_DATA / DATASETS[name].relative_path).read_bytes()
        assert corpora[name].text.encode("utf-8") == raw  # no newline translation, nothing stripped
    assert corpora["wikitext2"].text.startswith(" \n = Robert Boulter = \n \n Robert Boulter is")


@needs_shared_data
def test_wikitext_eval_split_counts(wikitext_split: data.EvalSplit) -> None:
    assert wikitext_split.num_tokens == 286_221
    assert wikitext_split.num_words == 241_211
    assert wikitext_split.num_bytes == 1_290_590
    # The GPT-2 paper's normaliser counts one end-of-line per line on top: 241,211 + 4,358.
    assert wikitext_split.num_words + wikitext_split.text.count("\n") == 245_569


@needs_shared_data
def test_tinyshakespeare_eval_split_is_nanogpts_last_ten_percent(
    corpora: dict[str, Corpus], shakespeare_ids: list[int], shakespeare_split: data.EvalSplit
) -> None:
    assert len(shakespeare_ids) == 338_025
    cut = int(0.9 * len(shakespeare_ids))
    assert cut == 304_222  # train_tokens in TRAINING.json
    assert shakespeare_split.num_tokens == 33_803  # val_tokens in TRAINING.json
    assert shakespeare_split.token_ids == tuple(shakespeare_ids[cut:])
    assert shakespeare_split.num_bytes == len(shakespeare_split.text.encode("utf-8"))
    assert shakespeare_split.num_words == len(shakespeare_split.text.split())
    # ASCII text, cut on a token boundary: the decoded split is a suffix of the file.
    assert corpora["tinyshakespeare"].text.endswith(shakespeare_split.text)


def test_lambada_eval_split_joins_passages() -> None:
    corpus = Corpus(name="lambada", documents=("one two", "three four five"), source="test")
    split = eval_split(corpus)
    assert split.text == "one two\n\nthree four five"
    assert (split.num_words, split.num_bytes) == (5, 24)
    assert split.token_ids == tuple(encode(split.text))


# ------------------------------------------------------------------------- LAMBADA items


@needs_shared_data
def test_lambada_examples_split_like_lm_evaluation_harness(corpora: dict[str, Corpus]) -> None:
    examples = lambada_examples(corpora["lambada"])
    assert len(examples) == 5153
    first, last = examples[0], examples[-1]
    assert first.target == " signs"
    assert first.context.startswith("In my palm is a clear stone, and inside it is a small ivory statuette.")
    assert first.context.endswith("in a confident grin, I don't care about")
    # Newlines inside a passage are not separators: only the last ASCII space splits.
    assert examples[1].target == " Shane"
    assert examples[1].context.endswith('dock.\n\n"I can make it there on my own,')
    assert last.target == " Grandmother"
    assert last.context.endswith("\u201cI would never forget the rules,")
    assert all(ex.context + ex.target == text for ex, text in zip(examples, corpora["lambada"].documents, strict=True))


def test_lambada_examples_rejects_other_corpora_and_unsplittable_passages() -> None:
    with pytest.raises(ConfigError, match="lambada"):
        lambada_examples(Corpus(name="wikitext2", documents=("a b",), source="test"))
    with pytest.raises(DataError, match="no space"):
        lambada_examples(Corpus(name="lambada", documents=("a b", "single"), source="test"))


# ------------------------------------------------------------------------- failures of the directory route


@needs_shared_data
def test_corrupted_copy_raises_data_error_naming_file_and_hashes(tmp_path: Path) -> None:
    spec = DATASETS["wikitext2"]
    original = (SHARED_DATA / spec.relative_path).read_bytes()
    corrupted = original.replace(b"Robert Boulter", b"Robert Boulder", 1)
    target = tmp_path / spec.relative_path
    target.parent.mkdir(parents=True)
    target.write_bytes(corrupted)
    with pytest.raises(DataError, match="sha256") as caught:
        load_corpus("wikitext2", data_dir=tmp_path)
    message = str(caught.value)
    assert str(target.resolve()) in message
    assert spec.sha256 in message
    assert hashlib.sha256(corrupted).hexdigest() in message


def test_missing_file_in_the_given_dir_is_a_data_error_without_fallback(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls = _fake_datasets(monkeypatch, lambda *args, **kwargs: pytest.fail("must not try `datasets`"))
    with pytest.raises(DataError, match=re.escape("lambada/lambada_test.jsonl")):
        load_corpus("lambada", data_dir=tmp_path)
    with pytest.raises(DataError, match="does not exist"):
        load_corpus("lambada", data_dir=tmp_path / "nowhere")
    assert calls == []


@needs_shared_data
def test_env_var_supplies_the_default_dir(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(DATA_DIR_ENV, str(SHARED_DATA))
    assert default_data_dir() == SHARED_DATA
    corpus = load_corpus("tinyshakespeare")
    assert corpus.source.startswith("dir:") and corpus.sha256 == DATASETS["tinyshakespeare"].sha256
    monkeypatch.setenv(DATA_DIR_ENV, "  ")
    assert default_data_dir() is None


# ------------------------------------------------------------------------- the `datasets` route


def test_no_dir_and_failing_download_raise_one_error_naming_both_routes(
    no_data_dir_env: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    offline = ConnectionError("Couldn't reach 'Salesforce/wikitext' on the Hub (OfflineModeIsEnabled)")

    def fail(*args, **kwargs):  # noqa: ANN002, ANN003, ANN202
        raise offline

    calls = _fake_datasets(monkeypatch, fail)
    with pytest.raises(DataError) as caught:
        load_corpus("wikitext2")
    message = str(caught.value)
    for part in (
        "'wikitext2'",
        "--data-dir",
        DATA_DIR_ENV,
        "wikitext-2-raw/wiki.test.raw",
        "`datasets`",
        "Couldn't reach",
    ):
        assert part in message
    assert caught.value.__cause__ is offline
    assert calls == [("Salesforce/wikitext", "wikitext-2-raw-v1", "test")]


def _rows_as_the_hub_builders_yield_them(name: str, raw: bytes) -> dict[str, list[str]]:
    """Rows per split, built from the canonical file by the rules of the Hub's builder scripts
    (huggingface/datasets: datasets/wikitext/wikitext.py, datasets/tiny_shakespeare/
    tiny_shakespeare.py) and of EleutherAI/lambada_openai (one row per JSON line)."""
    text = raw.decode("utf-8")
    if name == "wikitext2":
        return {"test": [line if line.strip() else "" for line in text.splitlines(keepends=True)]}
    if name == "lambada":
        return {"test": [json.loads(line)["text"] for line in text.split("\n") if line]}
    cut = int(len(text) * 0.9)
    train, rest = text[:cut], text[cut:]
    cut = int(len(rest) * 0.5)
    return {"train": [train], "validation": [rest[:cut]], "test": [rest[cut:]]}


@needs_shared_data
@pytest.mark.parametrize("name", list(DATASETS))
def test_datasets_rows_rebuild_the_pinned_file(
    corpora: dict[str, Corpus], name: str, no_data_dir_env: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    spec = DATASETS[name]
    rows = _rows_as_the_hub_builders_yield_them(name, (SHARED_DATA / spec.relative_path).read_bytes())
    calls = _fake_datasets(monkeypatch, lambda path, config, *, split: {"text": rows[split]})
    corpus = load_corpus(name)
    assert corpus.source == spec.datasets_source
    assert corpus.sha256 == spec.sha256
    assert corpus.documents == corpora[name].documents
    assert calls == [(spec.hf_path, spec.hf_name, split) for split in spec.hf_splits]


@needs_shared_data
def test_naive_join_of_wikitext_rows_is_not_the_file() -> None:
    # "".join(rows) loses the " \n" of every blank line: 1,467 of them, 2 bytes each.
    raw = (SHARED_DATA / DATASETS["wikitext2"].relative_path).read_bytes()
    rows = _rows_as_the_hub_builders_yield_them("wikitext2", raw)["test"]
    assert len(rows) == 4358
    assert len(raw) - len("".join(rows).encode("utf-8")) == 2 * 1467


@needs_shared_data
def test_a_datasets_copy_that_differs_is_rejected(no_data_dir_env: None, monkeypatch: pytest.MonkeyPatch) -> None:
    raw = (SHARED_DATA / DATASETS["lambada"].relative_path).read_bytes()
    rows = _rows_as_the_hub_builders_yield_them("lambada", raw)["test"]
    rows[0] = rows[0] + " extra"
    _fake_datasets(monkeypatch, lambda path, config, *, split: {"text": rows})
    with pytest.raises(DataError, match="sha256") as caught:
        load_corpus("lambada")
    assert "--data-dir" in str(caught.value) and "EleutherAI/lambada_openai" in str(caught.value)


def test_real_datasets_route_fails_fast_offline(tmp_path: Path) -> None:
    # A fresh interpreter: huggingface_hub reads HF_HUB_OFFLINE when first imported, and an
    # empty HF_HOME keeps a developer's cached copy from turning this into a success.
    env = {key: value for key, value in os.environ.items() if key != DATA_DIR_ENV}
    env.update(HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", HF_HOME=str(tmp_path / "hf"))
    script = (
        "from gpt2xl.data import load_corpus\n"
        "from gpt2xl.errors import DataError\n"
        "try:\n"
        "    load_corpus('tinyshakespeare')\n"
        "except DataError as error:\n"
        "    print(error)\n"
        "else:\n"
        "    raise SystemExit('loaded without a data directory while offline')\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", script], cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr
    assert "--data-dir" in result.stdout and "`datasets`" in result.stdout
    assert "karpathy/tiny_shakespeare" in result.stdout


# ------------------------------------------------------------------------- arguments


def test_unknown_name_lists_the_known_ones() -> None:
    with pytest.raises(ConfigError, match="wikitext2, lambada, tinyshakespeare"):
        load_corpus("wikitext103")
    with pytest.raises(ConfigError, match="Unknown dataset"):
        eval_split(Corpus(name="mystery", documents=("text",), source="test"))


def test_empty_data_dir_string_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="data_dir"):
        load_corpus("wikitext2", data_dir=" ")


@pytest.mark.parametrize(
    "fields",
    [
        {"name": "", "documents": ("a",), "source": "s"},
        {"name": "x", "documents": (), "source": "s"},
        {"name": "x", "documents": ["a"], "source": "s"},
        {"name": "x", "documents": ("a",), "source": ""},
        {"name": "x", "documents": ("a",), "source": "s", "sha256": "abc"},
    ],
)
def test_corpus_validates_its_fields(fields: dict) -> None:
    with pytest.raises(ConfigError):
        Corpus(**fields)
