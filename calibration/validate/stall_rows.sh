#!/usr/bin/env bash
# A B=1 server (resnet18, ONNX Runtime CPU; TH threads, DW decode threads) driven at two rates
# for DUR s each: one row per request with the server's timing headers, and the garbage
# collections of the server and the load generator (gc_pauses.py), for the queue-wait tail seen
# on the 16-core machine (analysed by device-2026-11-27/stalls.py). Results in $OUT.
#     bash calibration/validate/stall_rows.sh        # DUR=25 R1=31 R2=52 TH=4 DW=2 as run there
set -u
export PYTHONUNBUFFERED=1
OUT=${OUT:-/tmp/stallout}; mkdir -p "$OUT"
if ls .whl/*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
  export PYTHONPATH=/tmp/site:$PWD
else
  export PYTHONPATH=$PWD
fi
DUR=${DUR:-20}; R1=${R1:-31}; R2=${R2:-52}; TH=${TH:-4}; DW=${DW:-2}
python3 calibration/validate/gc_pauses.py "$OUT/gc_server.json" serve --model resnet18 --backend onnxruntime --device cpu \
  --max-batch-size 1 --max-queue-delay-ms 0 --instances 1 --threads "$TH" --preprocess-workers "$DW" --port 8765 \
  > "$OUT/server.log" 2>&1 &
SP=$!
for i in $(seq 1 120); do grep -q listening "$OUT/server.log" && break; sleep 0.5; done
echo "server up after $i polls"
python3 calibration/validate/gc_pauses.py "$OUT/gc_load_a.json" load http://127.0.0.1:8765 --rate "$R1" --duration "$DUR" --payload jpeg --quiet --out "$OUT/rows_a.csv" 2>&1 | tail -8
python3 calibration/validate/gc_pauses.py "$OUT/gc_load_b.json" load http://127.0.0.1:8765 --rate "$R2" --duration "$DUR" --payload jpeg --quiet --seed 2 --out "$OUT/rows_b.csv" 2>&1 | tail -8
kill -INT $SP; wait $SP
ls -la "$OUT"
