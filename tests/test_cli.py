"""``gpt2xl generate`` as a user runs it: a real process, its output and its exit status."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import pytest

from .conftest import TINY_SHAKESPEARE


def run_cli(*args: str, timeout: int = 180) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "gpt2xl_app.cli", *args], capture_output=True, text=True, timeout=timeout
    )


def test_generate_prints_shakespeare_and_timings():
    out = run_cli("generate", "ROMEO:", "--model", str(TINY_SHAKESPEARE), "--max-new-tokens", "30",
                  "--temperature", "0.8", "--top-k", "40", "--seed", "1")
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith("ROMEO:")
    assert "tok/s" in out.stderr


def test_generate_json_reports_tokens_text_and_speed():
    out = run_cli("generate", "JULIET:", "--model", str(TINY_SHAKESPEARE), "--max-new-tokens", "12",
                  "--num-samples", "2", "--seed", "5", "--json")
    assert out.returncode == 0, out.stderr
    doc = json.loads(out.stdout)
    assert doc["prompt_tokens"] == [41, 6239, 40, 2767, 25]  # as GPT2TokenizerFast encodes it
    assert doc["seed"] == 5 and doc["sampling"]["top_k"] is None
    assert len(doc["samples"]) == 2
    for sample in doc["samples"]:
        assert len(sample["tokens"]) <= 12 and isinstance(sample["text"], str)
    assert doc["timings"]["decode_tokens_per_s"] > 0 and doc["timings"]["prefill_s"] > 0
    assert doc["model"]["kind"] == "checkpoint"
    assert doc["environment"]["torch"]


def test_generate_top_p_reaches_the_sampler_and_the_json(tiny_shakespeare):
    from gpt2xl.sampling import SamplingConfig, generate, make_generator

    out = run_cli("generate", "ROMEO:", "--model", str(TINY_SHAKESPEARE), "--max-new-tokens", "20",
                  "--temperature", "1.2", "--top-p", "0.9", "--seed", "4", "--json")
    assert out.returncode == 0, out.stderr
    doc = json.loads(out.stdout)
    assert doc["sampling"]["top_p"] == 0.9 and doc["sampling"]["temperature"] == 1.2

    def sample(top_p: float | None) -> list[int]:
        cfg = SamplingConfig(max_new_tokens=20, temperature=1.2, top_p=top_p)
        return generate(tiny_shakespeare.model, [doc["prompt_tokens"]], cfg, generator=make_generator(4)).tokens[0]

    assert doc["samples"][0]["tokens"] == sample(0.9) != sample(None)


def test_random_weights_are_labelled():
    out = run_cli("generate", "Hello", "--model", "random:tiny", "--max-new-tokens", "4")
    assert out.returncode == 0, out.stderr
    assert "RANDOM weights" in out.stderr


@pytest.mark.parametrize(
    "args,fragment",
    [
        (["--temperature", "-1"], "temperature"),
        (["--top-k", "-5"], "top_k"),
        (["--max-new-tokens", "-2"], "max_new_tokens"),
        (["--num-samples", "0"], "num_samples"),
        (["--model", "not-a-model"], "Unknown model"),
        (["--model", "random:gpt5"], "Unknown preset"),
        (["--device", "cuda"], "CUDA"),
        (["--device", "tpu"], "device"),
        (["--dtype", "fp8"], "dtype"),
    ],
)
def test_bad_input_gives_one_line_and_exit_2(args, fragment):
    base = ["generate", "x", "--model", "random:tiny", "--max-new-tokens", "2"]
    out = run_cli(*base, *args)
    assert out.returncode == 2
    assert "Traceback" not in out.stderr
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:") and fragment in lines[0], out.stderr


def test_missing_and_corrupt_weights(tmp_path):
    ckpt = tmp_path / "ckpt"
    ckpt.mkdir()
    shutil.copy(TINY_SHAKESPEARE / "config.json", ckpt / "config.json")
    missing = run_cli("generate", "x", "--model", str(ckpt))
    assert missing.returncode == 2 and "no weights" in missing.stderr and "Traceback" not in missing.stderr
    (ckpt / "model.safetensors").write_bytes(b"\x00" * 100)
    corrupt = run_cli("generate", "x", "--model", str(ckpt))
    assert corrupt.returncode == 2 and "safetensors" in corrupt.stderr and "Traceback" not in corrupt.stderr


def test_help_teaches():
    out = run_cli("generate", "--help")
    assert out.returncode == 0
    for option in ("--model", "--temperature", "--top-k", "--top-p", "--seed", "--device", "--dtype", "--num-samples",
                   "--json"):
        assert option in out.stdout


def test_generate_autotune_option_reaches_the_result() -> None:
    from gpt2xl.generation import run_generation

    off = run_generation("Hi", model="random:tiny", max_new_tokens=2, temperature=0, top_k=None, seed=0, autotune="off")
    assert off["model"]["kernels"]["mode"] == "off" and off["model"]["kernels"]["choices"] == []
    assert off["environment"]["cpu_flags"] == sorted(off["environment"]["cpu_flags"])


def test_generate_rejects_unknown_autotune_mode() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "gpt2xl_app.cli", "generate", "x", "--model", "random:tiny", "--autotune", "always"],
        capture_output=True, text=True, timeout=120,
    )
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        "error: Unknown autotune mode 'always'; choose one of: off, cached, fresh."
    ]
