#!/usr/bin/env bash
# capsim validate on a machine with enough cores that the server, its decode threads and the load
# generator do not share them (the lent GPU machines have 16): calibrate resnet18 on ONNX Runtime
# CPU with a fixed thread count, then validate the Poisson cells (B 1/4/8, loads 0.3-0.85) and the
# camera pipeline with bursts against that profile.
#
#     bash calibration/validate/validate_device.sh          # results in $OUT
#
# simpy is missing on those machines: carry .whl/ (see calibration/gpu/calibrate_gpu.sh).
# Knobs: CAPSIM_MODEL (resnet18), CAPSIM_THREADS (4), CAPSIM_DECODERS (2), CAPSIM_DURATION (10),
# CAPSIM_REPEAT (2: each cell twice, the median compared and the spread reported as noise),
# CAPSIM_MAX_SECONDS (3), CAPSIM_BATCHES (1,2,4,8,16), CAPSIM_STREAMS (6x25fps), CAPSIM_BURST (2),
# CAPSIM_STREAM_DURATION (30), CAPSIM_CONFIGS (B=1,D=0;B=4,D=5;B=8,D=10), CAPSIM_PROFILE (none:
# calibrate first; e.g. calibration/resnet18-onnxruntime-cpu-fp32-xeon16-4t.json, measured there),
# CAPSIM_VALIDATE_TIMEOUT (420 s for the Poisson cells), CAPSIM_SKIP_STREAMS (unset: the camera
# cells run too; 1 skips them when the device budget is short), CAPSIM_VALIDATE_ARGS (more
# \`capsim validate\` flags for the Poisson cells, e.g. --no-overlap where the co-run is known ~1).
set -u
set -o pipefail
export PYTHONUNBUFFERED=1
OUT=${OUT:-/tmp/valout}
MODEL=${CAPSIM_MODEL:-resnet18}
THREADS=${CAPSIM_THREADS:-4}
DECODERS=${CAPSIM_DECODERS:-2}
DUR=${CAPSIM_DURATION:-10}
REPEAT=${CAPSIM_REPEAT:-2}
MAXS=${CAPSIM_MAX_SECONDS:-3}
BATCHES=${CAPSIM_BATCHES:-1,2,4,8,16}
STREAMS=${CAPSIM_STREAMS:-6x25fps}
BURST=${CAPSIM_BURST:-2}
SDUR=${CAPSIM_STREAM_DURATION:-30}
CONFIGS=${CAPSIM_CONFIGS:-B=1,D=0;B=4,D=5;B=8,D=10}
VTIMEOUT=${CAPSIM_VALIDATE_TIMEOUT:-420}
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
python3 - <<'PY' 2>&1 | tee -a "$LOG"
import os, platform
print("python", platform.python_version(), "cpus", os.cpu_count())
import onnxruntime, aiohttp, simpy, numba, scipy, yaml, PIL, capsim
print("onnxruntime", onnxruntime.__version__, "aiohttp", aiohttp.__version__, "simpy", simpy.__version__,
      "numba", numba.__version__, "capsim", capsim.__version__)
PY
grep -m1 "model name" /proc/cpuinfo | tee -a "$LOG"

if [ -n "${CAPSIM_PROFILE:-}" ]; then   # a profile measured on this kind of machine before
    PROFILE=$CAPSIM_PROFILE
    log "profile $PROFILE (threads: the profile's)"
else
    PROFILE="$OUT/$MODEL-onnxruntime-cpu-fp32.json"
    log "calibrate $MODEL onnxruntime cpu fp32, $THREADS threads, batches $BATCHES"
    timeout -k 10 240 python3 -m capsim.cli calibrate --model "$MODEL" --backend onnxruntime --device cpu \
        --precision fp32 --threads "$THREADS" --batch-sizes "$BATCHES" --instances 1 --max-seconds "$MAXS" \
        --out "$PROFILE" --quiet 2>&1 | tee -a "$LOG" || { log "FAILED calibration"; exit 1; }
fi

log "validate $MODEL: configs $CONFIGS, loads 0.3-0.85, $DUR s per cell x $REPEAT, $DECODERS decode threads"
timeout -k 10 "$VTIMEOUT" python3 -m capsim.cli validate --model "$MODEL" --backend onnxruntime --profile "$PROFILE" \
    --configs "$CONFIGS" --loads 0.3,0.5,0.7,0.85 --duration "$DUR" --repeat "$REPEAT" --preprocess-workers "$DECODERS" \
    ${CAPSIM_VALIDATE_ARGS:-} --out "$OUT/validation.json" 2>&1 | tee -a "$LOG" || log "FAILED validate (exit $?)"

if [ -n "${CAPSIM_SKIP_STREAMS:-}" ]; then log "camera cells skipped (CAPSIM_SKIP_STREAMS)"; log "done"; exit 0; fi
log "validate $MODEL streams $STREAMS, bursts x$BURST"
timeout -k 10 200 python3 -m capsim.cli validate --model "$MODEL" --backend onnxruntime --profile "$PROFILE" \
    --configs "B=4,D=5;B=8,D=10" --streams "$STREAMS" --burst "$BURST" --burst-s 2 --calm-s 6 \
    --duration "$SDUR" --preprocess-workers "$DECODERS" --out "$OUT/validation-streams.json" 2>&1 \
    | tee -a "$LOG" || log "FAILED validate --streams (exit $?)"
log "done"
