#!/usr/bin/env bash
# Every check that needs an NVIDIA GPU, in one go: the cuda-marked tests, a calibration of the GPU
# for the cost model, and `memplan bench --device cuda` on three bundled profiles, each predicted
# from the bundled profile of the GPU and from the calibrated one. Everything is written to the
# folder given (default: cuda-results/), which benchmarks/RESULTS.md quotes.
set -uo pipefail
out=${1:-cuda-results}
mkdir -p "$out"
export PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee "$out/gpu.txt"
python3 -c "import torch; print('torch', torch.__version__)" | tee -a "$out/gpu.txt"
python3 -m pytest -q -p no:cacheprovider -m cuda tests 2>&1 | tail -20 | tee "$out/cuda_tests.txt"
memplan bench --calibrate --device cuda --device-profile "$out/device.yaml" --json > "$out/calibration.json"
bench() {  # bench NAME ARGS...: one profile, predicted from the bundled and from the calibrated GPU profile
  local name=$1; shift
  memplan bench "$@" --device cuda --json > "$out/$name.json" 2> "$out/$name.err"
  memplan bench "$@" --device cuda --device-profile "$out/device.yaml" --json > "$out/$name-calibrated.json" \
    2> "$out/$name-calibrated.err"
}
bench gpt2 gpt2 --steps 20 --warmup 3 --methods adam,adam:impl=fused,adafactor,sm3,smmf,et2,et_inf
bench resnet50 resnet50 --steps 20 --warmup 3 --methods adam,adam:impl=fused,adafactor,sm3,smmf,et2,et_inf
bench llama-7b llama-7b --dtype bfloat16 --steps 3 --warmup 1 --methods adam,adam:impl=fused,smmf,et2
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
        print(f"  {row['method']:<16} state {row['measured_state_bytes']} (pred. {row['predicted_state_bytes']}, "
              f"allocator {row['allocator_state_bytes']}) step {row['step_ms_median']} ms "
              f"(p10 {row['step_ms_p10']}, p90 {row['step_ms_p90']}; pred. {row['predicted_step_ms']}) "
              f"skipped={row['skipped']}")
PY
