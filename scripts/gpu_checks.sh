#!/usr/bin/env bash
# The GPU checks of this round, in one command for a machine with a CUDA GPU and the stack installed
# (`bash .ci/setup --cuda`). Prints what it runs, the card, and each step's figures; writes them under
# ${OUT:-gpu-results}/. Sized for one 10-minute slot: tests ~2-3 min, the load benchmark ~4-5 min.
#
# Usage: bash scripts/gpu_checks.sh [tests] [load] [interop] [realsize]    (default: tests load)
#   tests     every test marked `gpu` (streaming loader on CUDA, interop, LoRA, offload/compile, placement, compare)
#   load      benchmarks/bench_load_memory.py --device cuda (issue 11: load time vs diffusers, device peak)
#   interop   benchmarks/bench_interop_gpu.py (issue 10: save/LoRA/offload/compile on CUDA)
#   realsize  benchmarks/bench_realsize.py (issue 14: FLUX.1-dev at full size, random weights; ~34 GB disk,
#             one 8-minute command measures most variants, a rerun the rest)
set -uo pipefail  # a failing step is reported and the next one still runs
cd "$(dirname "$0")/.."
out="${OUT:-gpu-results}"
mkdir -p "$out"
steps=("$@")
[ ${#steps[@]} -eq 0 ] && steps=(tests load)
python - <<'EOF' || exit 1
import sys
try:
    import torch
except ImportError:
    sys.exit("torch is not installed here: run `bash .ci/setup --cuda` first")
if not torch.cuda.is_available():
    sys.exit(f"no CUDA GPU visible to torch {torch.__version__}: these checks need one")
print("card:", torch.cuda.get_device_name(0), "| torch", torch.__version__, "| CUDA", torch.version.cuda, flush=True)
EOF
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 OMP_WAIT_POLICY=PASSIVE
for step in "${steps[@]}"; do
    start=$(date +%s)
    echo "== $step"
    case "$step" in
        tests) python -m pytest -q -p no:cacheprovider -m gpu tests/ 2>&1 | tee "$out/gpu-tests.txt" | tail -25 ;;
        load) python benchmarks/bench_load_memory.py --device cuda --json "$out/bench_load_cuda.json" 2>&1 \
            | grep -v "^\[transformers\]\|Failed to load\|^W[0-9]" | tee "$out/bench_load_cuda.txt" | tail -40 ;;
        interop) python benchmarks/bench_interop_gpu.py 2>&1 | tee "$out/bench_interop_gpu.txt" | tail -30 ;;
        realsize) python benchmarks/bench_realsize.py --work "${QUANTKIT_REALSIZE_WORK:-/tmp/quantkit-realsize}" 2>&1 \
            | tee "$out/bench_realsize.txt" | tail -40 ;;
        *) echo "unknown step '$step': tests, load, interop, realsize" >&2; exit 2 ;;
    esac
    code=$?
    echo "== $step: exit $code, $(( $(date +%s) - start )) s"
    [ "$code" -eq 0 ] || failed=1
done
exit "${failed:-0}"
