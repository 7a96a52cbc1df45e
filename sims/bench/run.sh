#!/usr/bin/env bash
# The OCPP server benchmark of BENCHMARKS.md. Runs the same load twice in one command:
#   1. baseline: `loadstar-echo`, a bare responder (no auth, validation, state or store);
#   2. `loadstar run` on a generated site with N stations (Basic auth, validation both ways,
#      site state, sled store).
# and prints both reports, so Loadstar's own cost is read as a ratio against the baseline.
# Usage: bash sims/bench/run.sh STATIONS RATE SECONDS [OCPP_VERSION]
set -euo pipefail
cd "$(dirname "$0")/../.."
N=${1:-1000}
RATE=${2:-2000}
SECS=${3:-30}
VERSION=${4:-1.6}
export LOADGEN_PASSWORD=${LOADGEN_PASSWORD:-loadgen-password-0001}
WORK=$(mktemp -d)
PIDS=()
trap 'for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done; rm -rf "$WORK"' EXIT
ulimit -n "$(ulimit -Hn)"
cargo build --release -q -p loadstar -p loadstar-sims
python3 sims/bench/gen_site.py "$N" "$WORK/site.toml"
LOADGEN=(./target/release/loadstar-loadgen --stations "$N" --rate "$RATE" --seconds "$SECS"
    --ocpp "$VERSION" --connect-rate 2000)

echo "== baseline: loadstar-echo"
./target/release/loadstar-echo 127.0.0.1:19100 &
PIDS+=($!)
sleep 1
"${LOADGEN[@]}" --url ws://127.0.0.1:19100/ocpp --server-pid "${PIDS[-1]}" 2>/dev/null
kill "${PIDS[-1]}"

echo "== loadstar run"
${SERVER_ENV:-} ./target/release/loadstar run --config "$WORK/site.toml" --data-dir "$WORK/data" --ocpp-listen 127.0.0.1:19000 &
PIDS+=($!)
sleep 2
"${LOADGEN[@]}" --url ws://127.0.0.1:19000/ocpp --server-pid "${PIDS[-1]}" 2>/dev/null
