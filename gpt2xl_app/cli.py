"""The ``gpt2xl`` command line: a thin layer over the library.

Every command turns options into library calls and prints what they return. User errors
(:class:`gpt2xl.errors.GPT2XLError`) become one line on stderr and exit status 2, never a traceback.
"""

from __future__ import annotations

import json
import sys
from typing import Annotated, Optional

import typer

from gpt2xl.errors import GPT2XLError

app = typer.Typer(
    name="gpt2xl",
    help=(
        "GPT-2 (up to XL) from scratch: generate text, benchmark throughput, evaluate sampling settings.\n\n"
        "Models (--model): a hub name (gpt2, gpt2-xl, openai-community/gpt2-xl; needs the network or the "
        "HF cache), a local Hugging Face checkpoint directory (config.json + model.safetensors), or "
        "random:<preset> (random weights at gpt2 … gpt2-xl / tiny shapes, for throughput only)."
    ),
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)

@app.callback()
def _root() -> None:
    """GPT-2 (up to XL) from scratch: generate text, benchmark throughput, evaluate sampling settings."""


ModelOpt = Annotated[
    str,
    typer.Option(
        "--model", "-m",
        help="Hub name, local HF checkpoint directory, or random:<preset> (e.g. random:gpt2-xl).",
    ),
]
DeviceOpt = Annotated[str, typer.Option(help="cpu, cuda or cuda:N.")]
DtypeOpt = Annotated[str, typer.Option(help="fp32, fp16 or bf16 (the device must support it).")]


@app.command()
def generate(
    prompt: Annotated[str, typer.Argument(help="Text to continue. An empty string starts from <|endoftext|>.")],
    model: ModelOpt = "gpt2-xl",
    max_new_tokens: Annotated[int, typer.Option(help="Tokens to generate per sample (stops early at <|endoftext|>).")] = 50,
    temperature: Annotated[float, typer.Option(help="Softmax temperature; 0 means greedy decoding.")] = 1.0,
    top_k: Annotated[Optional[int], typer.Option(help="Keep the k most likely tokens; 0 or unset keeps all.")] = None,
    seed: Annotated[int, typer.Option(help="Seed of the sampling generator (and of random weights).")] = 0,
    device: DeviceOpt = "cpu",
    dtype: DtypeOpt = "fp32",
    num_samples: Annotated[int, typer.Option(help="Independent continuations, generated as one batch.")] = 1,
    as_json: Annotated[bool, typer.Option("--json", help="Print tokens, text, timings and tokens/sec as JSON.")] = False,
    autotune: Annotated[str, typer.Option(help=(
        "CPU kernel choices: cached (default: measured once per CPU, torch, threads and dtype, ~6 s for "
        "gpt2-xl, then reused), fresh (measure again), off (PyTorch's own kernels)."))] = "cached",
) -> None:
    """Continue PROMPT with the KV-cached temperature / top-k sampler.

    Example: gpt2xl generate "ROMEO:" --model ../shared/models/gpt2-tiny-shakespeare --temperature 0.8 --top-k 40
    """
    from gpt2xl.generation import run_generation

    result = run_generation(
        prompt,
        model=model,
        max_new_tokens=max_new_tokens,
        temperature=temperature,
        top_k=top_k,
        seed=seed,
        device=device,
        dtype=dtype,
        num_samples=num_samples,
        autotune=autotune,
    )
    if as_json:
        typer.echo(json.dumps(result, indent=2))
        return
    if result["model"]["weights"]["kind"] == "random":
        typer.echo(f"[{result['model']['weights']['label']}: the text is noise; use this for throughput only]", err=True)
    for i, sample in enumerate(result["samples"]):
        if num_samples > 1:
            typer.echo(f"--- sample {i + 1} ---")
        typer.echo(prompt + sample["text"])
    t = result["timings"]
    typer.echo(
        f"[{t['new_tokens']} tokens in {t['total_s']:.2f} s: prefill {t['prefill_s'] * 1000:.0f} ms, "
        f"decode {t['decode_tokens_per_s']:.2f} tok/s, end-to-end {t['tokens_per_s']:.2f} tok/s; "
        f"{result['model']['weights']['label']}, {result['model']['device']} {result['model']['dtype']}; "
        f"{_hardware(result)}]",
        err=True,
    )


def _hardware(result: dict) -> str:
    """The machine beside the speed: GPU name, or CPU model, its kernel flags and threads."""
    env = result["environment"]
    if result["model"]["device"].startswith("cuda") and env.get("gpus"):
        return env["gpus"][0]["name"]
    return f"{env['cpu']} [{' '.join(env['cpu_flags'])}], {env['torch_threads']} threads"


def _register_subcommands() -> None:
    from gpt2xl_app import bench_commands, eval_commands

    bench_commands.register(app)
    eval_commands.register(app)


_register_subcommands()


def main() -> None:
    """Console-script entry point: run the app, turning user errors into one line and exit 2."""
    try:
        app()  # standalone: click reports usage errors itself (exit 2) and exits
    except GPT2XLError as exc:
        typer.echo(f"error: {exc}", err=True)
        sys.exit(2)


if __name__ == "__main__":
    main()
