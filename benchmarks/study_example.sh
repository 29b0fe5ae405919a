#!/usr/bin/env bash
# The end-to-end example of docs/study.md, with SIMULATED participants (not human data).
#
# Makes a small synthetic data set (`animeprov data synth`), a split, a deliberately tiny model (cnn-dct-mask,
# 5 epochs at 64 px), a study of 6 test images per class plus 2 attention checks, serves it, lets 20
# SIMULATED participants answer through the HTTP API (right 60% of the time, unsure 10%), reads the admin
# progress, kills the server with `kill -9` (no clean shutdown), counts the answers left on disk, and writes
# the report with the model beside the simulated people. About 25 s on 2 idle CPU cores.
#
#     flock /tmp/animeprov-heavy.lock benchmarks/study_example.sh OUT_DIR [PORT]
#
# OUT_DIR must be new or empty; the report lands in OUT_DIR/report. PORT (default 8931) is the local port
# the study server listens on. `animeprov` is taken from PATH, else from the repository's .venv/bin.
set -euo pipefail

if [[ $# -lt 1 || $# -gt 2 ]]; then
    echo "usage: $0 OUT_DIR [PORT]" >&2
    exit 2
fi
out=$1
port=${2:-8931}
repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)

if command -v animeprov > /dev/null; then
    animeprov=$(command -v animeprov)
elif [[ -x "$repo/.venv/bin/animeprov" ]]; then
    animeprov=$repo/.venv/bin/animeprov
else
    echo "animeprov not found on PATH or in $repo/.venv/bin" >&2
    exit 2
fi
# The Python that runs animeprov, for the two small checks below (JSON and SQLite, standard library only).
python=$(dirname "$animeprov")/python
[[ -x "$python" ]] || python=python3

if [[ -e "$out" && -n "$(ls -A "$out")" ]]; then
    echo "$out is not empty; give a new or empty folder" >&2
    exit 2
fi
mkdir -p "$out"
cd "$out"  # relative paths below, so the report names split.csv and run as in docs/study.md
set -x

"$animeprov" data synth synth --per-class 60 --size 64 --seed 0
"$animeprov" data split synth/manifest.csv --out split.csv --seed 0
"$animeprov" train --data split.csv --variant cnn-dct-mask --size 64 --epochs 5 --out run --seed 0
"$animeprov" study create --data split.csv --out study --per-class 6 --seed 0 --attention-checks 2

export ANIMEPROV_STUDY_ADMIN_TOKEN=example-token
url=http://127.0.0.1:$port
"$animeprov" study serve study --port "$port" > serve.log 2>&1 &
server=$!
trap 'kill -9 "$server" 2> /dev/null || true' EXIT  # never leave the server behind on an error
for _ in $(seq 60); do
    curl -sf "$url/api/study" > /dev/null && break
    sleep 0.5
done
curl -sf "$url/api/study" > /dev/null || { echo "the study server did not start; see $PWD/serve.log" >&2; exit 1; }

"$animeprov" study simulate study --participants 20 --url "$url" --accuracy 0.6 --unsure-rate 0.1 --seed 0
curl -sf -H "X-Admin-Token: $ANIMEPROV_STUDY_ADMIN_TOKEN" "$url/api/admin/progress" \
    | "$python" -c "import json, sys; d = json.load(sys.stdin); d.pop('participants'); print(d)"

kill -9 "$server"  # no clean shutdown: every accepted answer must already be on disk
wait "$server" 2> /dev/null || true
"$python" -c "import sqlite3; print('answers on disk after kill -9:', \
sqlite3.connect('study/answers.sqlite').execute('select count(*) from answers').fetchone()[0])"

"$animeprov" study report study --out report --model run --export csv --seed 0
