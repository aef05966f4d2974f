"""The ``gpt2xl`` command line: a thin layer over the library.

Every command turns options into library calls and prints what they return. User errors
(:class:`gpt2xl.errors.GPT2XLError`) and usage errors (an unknown option, ``--temperature abc``)
become one line on stderr and exit status 2, never a traceback; anything else is a bug and keeps
its traceback.
"""

from __future__ import annotations

import json
import sys
from typing import Annotated, NoReturn

import typer

from gpt2xl.errors import GPT2XLError

try:  # typer >= 0.20 runs its own copy of click; its usage errors are that copy's classes
    from typer._click import exceptions as click_errors
except ImportError:  # older typer runs click itself
    from click import exceptions as click_errors  # type: ignore[no-redef]

NO_ARGS_IS_HELP = getattr(click_errors, "NoArgsIsHelpError", ())  # click < 8.2 exits with the help itself

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
    *,
    model: ModelOpt = "gpt2-xl",
    max_new_tokens: Annotated[int, typer.Option(help=(
        "Tokens to generate per sample, 0 to 1,000,000 (stops early at <|endoftext|>)."))] = 50,
    temperature: Annotated[float, typer.Option(help=(
        "Softmax temperature >= 0; 0 means greedy decoding. Any value > 0 is sampled safely: tiny ones "
        "(down to 5e-324) approach greedy, huge ones (up to 1e308) approach uniform over the candidates."))] = 1.0,
    top_k: Annotated[int | None, typer.Option(help=(
        "Keep the k most likely tokens; 0, unset or more than the vocabulary keeps all."))] = None,
    top_p: Annotated[float | None, typer.Option(help=(
        "Nucleus sampling: keep the smallest set of most likely tokens whose probability reaches p, "
        "0 < p <= 1, applied after temperature and top-k as Hugging Face does; 1 or unset keeps all."))] = None,
    seed: Annotated[int, typer.Option(help=(
        "Seed of the sampling generator (and of random weights), 0 to 2**63-1."))] = 0,
    device: DeviceOpt = "cpu",
    dtype: DtypeOpt = "fp32",
    num_samples: Annotated[int, typer.Option(help=(
        "Independent continuations, generated as one batch; refused up front when the estimate of "
        "their memory exceeds what is free."))] = 1,
    as_json: Annotated[bool, typer.Option("--json", help=(
        "Print tokens, text, timings and tokens/sec as JSON (prompt_cropped: tokens kept and dropped "
        "when the prompt is longer than the context, else null)."))] = False,
    autotune: Annotated[str, typer.Option(help=(
        "CPU kernel choices: cached (default: measured once per CPU, torch, threads and dtype, ~6 s for "
        "gpt2-xl, then reused), fresh (measure again), off (PyTorch's own kernels)."))] = "cached",
) -> None:
    """Continue PROMPT with the KV-cached temperature / top-k / top-p sampler.

    Every option is checked before the model loads; a bad one prints one `error:` line and exits 2.
    A prompt longer than the model's context keeps only its last tokens, with a warning on stderr.
    NaN or inf logits stop generation with an error naming the layer that first produced them.

    Example: gpt2xl generate "ROMEO:" --model ../shared/models/gpt2-tiny-shakespeare --temperature 0.8 --top-p 0.95
    """
    from gpt2xl.generation import run_generation

    result = run_generation(
        prompt,
        model=model,
        max_new_tokens=max_new_tokens,
        temperature=temperature,
        top_k=top_k,
        top_p=top_p,
        seed=seed,
        device=device,
        dtype=dtype,
        num_samples=num_samples,
        autotune=autotune,
    )
    cropped = result["prompt_cropped"]
    if cropped is not None:
        typer.echo(
            f"warning: the prompt has {cropped['kept_tokens'] + cropped['dropped_tokens']} tokens but the "
            f"model's context holds {cropped['kept_tokens']}; its first {cropped['dropped_tokens']} tokens "
            "were dropped.",
            err=True,
        )
    if as_json:
        typer.echo(json.dumps(result, indent=2))
        return
    if result["model"]["kind"] == "random":
        label = result["model"]["label"]
        typer.echo(f"[{label}: the text is noise; use this for throughput only]", err=True)
    for i, sample in enumerate(result["samples"]):
        if num_samples > 1:
            typer.echo(f"--- sample {i + 1} ---")
        typer.echo(prompt + sample["text"])
    t = result["timings"]
    typer.echo(
        f"[{t['new_tokens']} tokens in {t['total_s']:.2f} s: prefill {t['prefill_s'] * 1000:.0f} ms, "
        f"decode {t['decode_tokens_per_s']:.2f} tok/s, end-to-end {t['tokens_per_s']:.2f} tok/s; "
        f"{result['model']['label']}, {result['model']['device']} {result['model']['dtype']}; "
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
    """Console-script entry point: run the app, turning user errors into one line and exit 2.

    Click runs outside its standalone mode so that its usage errors (exit 2) come here too and
    are printed as one line, like ours, instead of a framed usage box.
    """
    try:
        code = app(standalone_mode=False)
    except GPT2XLError as exc:
        _fail(str(exc), code=2)
    except click_errors.UsageError as exc:
        if isinstance(exc, NO_ARGS_IS_HELP):  # a bare command group: its help, as click shows it
            exc.show()
            sys.exit(exc.exit_code)
        command = exc.ctx.command_path if exc.ctx is not None else "gpt2xl"
        _fail(f"{_sentence(exc.format_message())} See `{command} --help`.", code=exc.exit_code)
    except click_errors.ClickException as exc:
        _fail(exc.format_message(), code=exc.exit_code)
    except typer.Abort:
        _fail("aborted.", code=1)
    # Outside standalone mode click returns the exit code of typer.Exit / ctx.exit, or the
    # command's return value (None for all of ours).
    sys.exit(code if isinstance(code, int) else 0)


def _sentence(text: str) -> str:
    """``text`` ending with a full stop (click's messages sometimes lack one)."""
    text = text.strip()
    return text if text.endswith((".", "?", "!")) else f"{text}."


def _fail(message: str, *, code: int) -> NoReturn:
    """Print ``message`` as one ``error:`` line on stderr and exit with ``code``."""
    typer.echo(f"error: {' '.join(message.split())}", err=True)
    sys.exit(code)


if __name__ == "__main__":
    main()
