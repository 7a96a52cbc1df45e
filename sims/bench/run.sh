#!/usr/bin/env bash
# The OCPP server benchmark of BENCHMARKS.md: starts `loadstar run` on a generated site with N
# stations, drives it with `loadstar-loadgen`, and prints the report.
# Usage: bash sims/bench/run.sh STATIONS RATE SECONDS [OCPP_VERSION]
set -euo pipefail
cd "$(dirname "$0")/../.."
N=${1:-1000}
RATE=${2:-2000}
SECS=${3:-30}
VERSION=${4:-1.6}
export LOADGEN_PASSWORD=${LOADGEN_PASSWORD:-loadgen-password-0001}
WORK=$(mktemp -d)
trap 'kill "$SERVER" 2>/dev/null || true; rm -rf "$WORK"' EXIT
ulimit -n "$(ulimit -Hn)"
cargo build --release -q -p loadstar -p loadstar-sims
python3 sims/bench/gen_site.py "$N" "$WORK/site.toml"
${SERVER_ENV:-} ./target/release/loadstar run --config "$WORK/site.toml" --data-dir "$WORK/data" --ocpp-listen 127.0.0.1:19000 &
SERVER=$!
sleep 2
./target/release/loadstar-loadgen --url ws://127.0.0.1:19000/ocpp --stations "$N" --rate "$RATE" \
    --seconds "$SECS" --ocpp "$VERSION" --server-pid "$SERVER" --connect-rate 2000
