#!/usr/bin/env bash
# GPU calibration profiles for capsim: ResNet-50 / ResNet-18, torch eager on CUDA, FP32 and FP16,
# batch sizes 1..32 (1..64 for ResNet-18), 1 and 2 instances for the contention table.
#
# Run from the repository root on a machine with an NVIDIA GPU and torch with CUDA:
#     bash calibration/gpu/calibrate_gpu.sh
# Profiles go to $OUT/<model>-torch-cuda-<precision>.json, the full log to $OUT/log.txt.
# Copy the profiles into calibration/ and the log into calibration/gpu/log-<date>.txt.
#
# simpy is not installed on the lent GPU machines (no network there): wheels in .whl/ (git-ignored)
# are installed into /tmp/site first when present. Make it here and carry ".whl" with the run:
#     echo /.whl/ >> .git/info/exclude
#     python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
#         --platform manylinux2014_x86_64 -d .whl simpy==4.1.2
# Everything else the calibrate path imports (torch, numpy, pyyaml, numba, onnx, onnxruntime, pillow)
# is there. That onnxruntime is a CPU build: the onnxruntime CUDA run below is skipped and logged.
#
# Knobs (environment): CAPSIM_DEVICE (cuda), CAPSIM_MAX_SECONDS (2), CAPSIM_BATCHES (1,2,4,8,16,32),
# CAPSIM_BATCHES_R18 (1,2,4,8,16,32,64), CAPSIM_INSTANCES (1,2), CAPSIM_STEP_TIMEOUT (100 s per
# calibration). A CPU dry run of this very script:
#     OUT=/tmp/gpuout CAPSIM_DEVICE=cpu CAPSIM_BATCHES=1,2 CAPSIM_BATCHES_R18=1,2 CAPSIM_MAX_SECONDS=0.3 \
#         bash calibration/gpu/calibrate_gpu.sh
# (on CPU the fp16 runs fail with capsim's own "needs --device cuda" message, which checks the
# failure path; the script goes on).
set -u
set -o pipefail
export PYTHONUNBUFFERED=1

OUT=${OUT:-/tmp/gpuout}
DEVICE=${CAPSIM_DEVICE:-cuda}
MAXS=${CAPSIM_MAX_SECONDS:-2}
B50=${CAPSIM_BATCHES:-1,2,4,8,16,32}
B18=${CAPSIM_BATCHES_R18:-1,2,4,8,16,32,64}
INST=${CAPSIM_INSTANCES:-1,2}
STEP_TIMEOUT=${CAPSIM_STEP_TIMEOUT:-100}
mkdir -p "$OUT"
LOG="$OUT/log.txt"
: > "$LOG"
T0=$(date +%s)

log() { echo "== [$(( $(date +%s) - T0 )) s] $*" | tee -a "$LOG"; }

if ls .whl/*.whl >/dev/null 2>&1; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site \
        .whl/*.whl 2>&1 | tee -a "$LOG" || { log "FAILED to install carried wheels"; exit 1; }
    export PYTHONPATH=/tmp/site:$PWD
else
    export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}
fi

log "environment"
{ nvidia-smi || echo "nvidia-smi not available"; } 2>&1 | tee -a "$LOG"
python3 - <<'PY' 2>&1 | tee -a "$LOG"
import platform, os
print("python", platform.python_version(), "cpus", os.cpu_count())
import torch
print("torch", torch.__version__, "cuda build", torch.version.cuda, "cudnn", torch.backends.cudnn.version(),
      "cuda available", torch.cuda.is_available())
if torch.cuda.is_available():
    p = torch.cuda.get_device_properties(0)
    print("gpu", torch.cuda.get_device_name(0), f"{p.total_memory / 2**30:.1f} GiB", p.multi_processor_count, "SMs")
try:
    import onnxruntime as ort
    print("onnxruntime", ort.__version__, "device", ort.get_device(), "providers", ort.get_available_providers())
except Exception as exc:
    print("onnxruntime unavailable:", exc)
import simpy, capsim
print("simpy", simpy.__version__, "capsim", capsim.__version__)
PY

# calibrate MODEL BACKEND PRECISION BATCHES
calibrate() {
    local model=$1 backend=$2 prec=$3 batches=$4
    local out="$OUT/$model-$backend-$DEVICE-$prec.json"
    log "calibrate $model $backend $DEVICE $prec batches $batches instances $INST"
    timeout -k 10 "$STEP_TIMEOUT" python3 -m capsim.cli calibrate --model "$model" --backend "$backend" \
        --device "$DEVICE" --precision "$prec" --batch-sizes "$batches" --instances "$INST" \
        --max-seconds "$MAXS" --out "$out" 2>&1 | sed -u 's/\r\x1b\[K/\n/g' | tee -a "$LOG" \
        || log "FAILED $model $backend $DEVICE $prec (exit $?)"
}

calibrate resnet50 torch fp16 "$B50"
calibrate resnet50 torch fp32 "$B50"
calibrate resnet18 torch fp16 "$B18"
calibrate resnet18 torch fp32 "$B18"

if python3 -c "import onnxruntime as o, sys; sys.exit('CUDAExecutionProvider' not in o.get_available_providers())" \
        >/dev/null 2>&1; then
    calibrate resnet50 onnxruntime fp16 "$B50"
else
    log "SKIPPED resnet50 onnxruntime $DEVICE fp16: this onnxruntime lists no CUDAExecutionProvider (CPU build)"
fi

log "summary"
python3 - "$OUT" <<'PY' 2>&1 | tee -a "$LOG"
import json, pathlib, sys
for f in sorted(pathlib.Path(sys.argv[1]).glob("*.json")):
    d = json.loads(f.read_text())
    meds = " ".join(f"b{b['batch_size']}={b['median_ms']:.3f}" for b in d["batches"])
    con = d.get("contention") or {}
    fac = {k: round(v["factor"], 3) for k, v in (con.get("table") or {}).items()}
    pre, post, fid = d.get("preprocess") or {}, d.get("postprocess") or {}, d.get("fidelity") or {}
    print(f"{f.name}: median ms {meds}; contention@b{con.get('batch_size')} {fac}; "
          f"pre {pre.get('median_ms', float('nan')):.3f} ms post {post.get('median_ms', float('nan')):.4f} ms; "
          f"failures {d.get('failures')}; fidelity { {k: v for k, v in fid.items() if k != 'reference'} }")
PY
log "done"
