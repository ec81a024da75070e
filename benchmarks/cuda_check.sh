#!/usr/bin/env bash
# Every check that needs an NVIDIA GPU, in one go: the cuda-marked tests and the Triton kernel tests
# on the GPU, benchmarks/optim_speed.py on CUDA (the one-pass Triton steps against fused AdamW), a
# calibration of the GPU for the cost model, and `memplan bench --device cuda` on three bundled
# profiles, predicted from the bundled profile of the GPU and from the calibrated one. Everything is
# written to the folder given (default: cuda-results/), which benchmarks/RESULTS.md quotes.
set -uo pipefail
out=${1:-cuda-results}
mkdir -p "$out"
export PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee "$out/gpu.txt"
python3 -c "import torch, triton; print('torch', torch.__version__, 'triton', triton.__version__)" | tee -a "$out/gpu.txt"
parallel=$(python3 -c "import xdist" 2>/dev/null && echo "-n 8")
python3 -m pytest -q -p no:cacheprovider $parallel -m cuda tests 2>&1 | tail -15 | tee "$out/cuda_tests.txt"
python3 -m pytest -q -p no:cacheprovider $parallel tests/kernels/test_triton.py tests/kernels/test_triton_many.py \
  2>&1 | tail -15 | tee -a "$out/cuda_tests.txt"
for set in gpt2 resnet50; do
  python3 benchmarks/optim_speed.py --device cuda --set $set --steps 20 --repeats 3 2>&1 | tee "$out/optim_speed_$set.txt"
done
memplan bench --calibrate --device cuda --device-profile "$out/device.yaml" --json > "$out/calibration.json"
bench() {  # bench NAME ARGS...: one profile, predicted from the bundled and from the calibrated GPU profile
  local name=$1; shift
  memplan bench "$@" --device cuda --json > "$out/$name.json" 2> "$out/$name.err"
  memplan bench "$@" --device cuda --device-profile "$out/device.yaml" --json > "$out/$name-calibrated.json" \
    2> "$out/$name-calibrated.err"
}
methods=adam,adam:impl=fused,adafactor,sm3:impl=triton,sm3:momentum=0,impl=triton,smmf:impl=triton,\
smmf:beta1=none,impl=triton,smmf,et2,et_inf
bench gpt2 gpt2 --steps 20 --warmup 3 --methods $methods
bench resnet50 resnet50 --steps 20 --warmup 3 --methods $methods
bench llama-7b llama-7b --dtype bfloat16 --steps 3 --warmup 1 --methods adam:impl=fused,smmf:impl=triton
python3 - "$out" <<'PY'
import json, pathlib, sys
folder = pathlib.Path(sys.argv[1])
for path in sorted(folder.glob("*.json")):
    if path.name == "calibration.json":
        continue
    report = json.loads(path.read_text())
    print(f"\n{path.stem} ({report['device_name']}, {report['dtype']}, predictions from "
          f"{report.get('device_profile_origin')})")
    for row in report["results"]:
        print(f"  {row['method']:<16} {row.get('implementation') or '-':<9} state {row['measured_state_bytes']} "
              f"(pred. {row['predicted_state_bytes']}, allocator {row['allocator_state_bytes']}) "
              f"step {row['step_ms_median']} ms (p10 {row['step_ms_p10']}, p90 {row['step_ms_p90']}; "
              f"pred. {row['predicted_step_ms']}) skipped={row['skipped']}")
PY
