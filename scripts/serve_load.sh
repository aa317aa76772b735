#!/usr/bin/env bash
# Load figures of `scaledown serve` on loopback: queries/s and latency at 1, 4 and 16 clients,
# compressed and full text, batching on (--max-batch 16) and off (--max-batch 1); then a hostile
# run (malformed bodies between valid ones, server memory before and after).
# Usage: scripts/serve_load.sh CHECKPOINT DATA [REQUESTS] [BINARY]
set -euo pipefail
checkpoint=${1:?checkpoint folder}; data=${2:?prepared QA file}; requests=${3:-32}
bin=${4:-target/release/scaledown}
port=18181; url=http://127.0.0.1:$port
start() {
  "$bin" serve --checkpoint "$checkpoint" --port $port --max-batch "$1" --max-wait-ms 10 >"${TMPDIR:-/tmp}/serve_load.log" 2>&1 &
  pid=$!
  for _ in $(seq 600); do curl -sf $url/health >/dev/null 2>&1 && return; sleep 0.5; done
  echo "the server did not start"; cat "${TMPDIR:-/tmp}/serve_load.log"; exit 1
}
stop() { kill -TERM "$pid"; wait "$pid" || true; }
for batch in 1 16; do
  start $batch
  for compressed in true false; do
    echo "## --max-batch $batch, compressed $compressed"
    "$bin" load --url $url --data "$data" --requests "$requests" --concurrency 1,4,16 --compressed $compressed
  done
  stop
done
start 16
echo "## hostile"
"$bin" load --url $url --data "$data" --hostile 2000
stop
