#!/usr/bin/env bash
# Regenerate bench/RESULTS.md, bench/freeze_window.png and bench/results/*.json
# (`make bench`).  Needs both shapes of the dev cloud (each started here if down;
# tools/devcloud/README.md) and .venv.
# About 28-30 minutes on 2 vCPUs (the first run also creates ~140 Cinder volumes).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=.venv/bin/python
OUT=bench/results
mkdir -p "$OUT"

$PY -c 'import matplotlib' 2>/dev/null || $PY -m pip install -q -r bench/requirements.txt
tools/devcloud/devcloud.sh status >/dev/null 2>&1 || tools/devcloud/devcloud.sh start
DEVCLOUD_SHAPE=production tools/devcloud/devcloud.sh status >/dev/null 2>&1 ||
    DEVCLOUD_SHAPE=production tools/devcloud/devcloud.sh start

step() { echo "bench: $*" >&2; }
STRATEGIES=cgsnap,cgsnap-per-volume,nova-sequential,sequential-fastpoll,raw-parallel,group
step "one logbook write: stock vs lean persistence"
$PY bench/persist_write.py --writes 200 --reps 4 --out "$OUT/persist_write.json" >/dev/null
step "model backend, N=1,4,16 (5 reps)"
$PY bench/freeze_window.py --backend model --latency 0.2 --volumes 1,4,16 --reps 5 \
    --strategies $STRATEGIES --out "$OUT/model.json" >/dev/null
step "model backend, N=64 (3 reps)"
$PY bench/freeze_window.py --backend model --latency 0.2 --volumes 64 --reps 3 \
    --strategies $STRATEGIES --out "$OUT/model64.json" >/dev/null
step "dev Cinder, N=1,4,16 (3 reps)"
$PY bench/freeze_window.py --backend cinder --volumes 1,4,16 --reps 3 \
    --strategies $STRATEGIES --out "$OUT/cinder.json" >/dev/null
step "production-shaped Cinder, N=16, volumes in no group, cgsnap in a fresh process per rep (9 reps)"
$PY bench/freeze_window.py --backend cinder --shape production --volumes 16 --reps 9 \
    --strategies cgsnap,cgsnap-fixed,nova-sequential,raw-1,raw-2,raw-4,raw-8,raw-16 \
    --out "$OUT/cinder-production.json" >/dev/null
step "fleet, 24 x 4 volumes, 8 workers (7 reps)"
$PY bench/fleet.py --instances 24 --volumes-per 4 --concurrency 8 --reps 7 \
    --out "$OUT/fleet.json" >/dev/null
step "fleet breakdown: Cinder CPU and requests per set, one setting changed per phase (2 reps)"
$PY bench/fleet_breakdown.py --instances 24 --reps 2 --out "$OUT/fleet_breakdown.json" >/dev/null
$PY bench/report.py "$OUT"
