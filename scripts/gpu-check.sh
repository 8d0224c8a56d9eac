#!/usr/bin/env bash
# The one script to run when a GPU is lent for about ten minutes: `bench doctor` on every method,
# then `bench perf` at the paper's scale (WRN-28-10), each under a time limit, everything under $OUT.
#
#   scripts/gpu-check.sh                      # writes ./gpu-out/{doctor,perf}.json, logs, nvidia-smi.txt
#   OUT=/tmp/x scripts/gpu-check.sh           # elsewhere
#   GPU_CHECK_DRY=1 scripts/gpu-check.sh      # print the commands it would run; run and write nothing
#
# Data: the real CIFAR-10 sample cifar10-train-5k.npz when one is present (in the git-ignored
# shared-data/, or shared/data/, or ../shared/data/), copied into the scratch data directory
# (.gpu-data/, git-ignored) and used as --set data.dataset=npz:...; otherwise the built-in shapes10
# (generated there in about 15 s). Both JSON reports are rewritten as each check or method finishes,
# so a time limit that cuts a command short keeps what it measured ("complete": false).
#
# Settings (environment): OUT (./gpu-out), DOCTOR_SECONDS (300), PERF_SECONDS (240),
# GPU_CHECK_COMPILE_MODES (default; space-separated train.compile modes for the doctor),
# GPU_CHECK_PERF_METHODS (space-separated methods for bench perf; default all, in registry order),
# GPU_CHECK_DATA_DIR (.gpu-data), BENCH_CMD (how to call bench; default .venv/bin/bench, bench, python -m bench).
set -u
cd "$(dirname "$0")/.."

OUT="${OUT:-./gpu-out}"
DRY="${GPU_CHECK_DRY:-0}"
DOCTOR_SECONDS="${DOCTOR_SECONDS:-300}"
PERF_SECONDS="${PERF_SECONDS:-240}"
COMPILE_MODES="${GPU_CHECK_COMPILE_MODES:-default}"
DATA_DIR="${GPU_CHECK_DATA_DIR:-.gpu-data}"
if [ -n "${BENCH_CMD:-}" ]; then
    read -r -a BENCH <<< "$BENCH_CMD"
elif [ -x .venv/bin/bench ]; then
    BENCH=(.venv/bin/bench)
elif command -v bench > /dev/null 2>&1; then
    BENCH=(bench)
else
    BENCH=(python -m bench)
fi

# run LOG CMD...: print the command; unless dry, run it with its output also appended to LOG
run() {
    local log=$1
    shift
    echo "+ $*"
    [ "$DRY" = 1 ] && return 0
    "$@" 2>&1 | tee -a "$log"
    return "${PIPESTATUS[0]}"
}

[ "$DRY" = 1 ] || mkdir -p "$OUT"
SETS=(--set "data.data_dir=$DATA_DIR")
NPZ=""
for candidate in shared-data/cifar10-train-5k.npz shared/data/cifar10-train-5k.npz ../shared/data/cifar10-train-5k.npz; do
    if [ -f "$candidate" ]; then NPZ=$candidate; break; fi
done
if [ -n "$NPZ" ]; then
    echo "+ mkdir -p $DATA_DIR"
    [ "$DRY" = 1 ] || mkdir -p "$DATA_DIR"
    run "$OUT/setup.log" cp "$NPZ" "$DATA_DIR/cifar10-train-5k.npz"
    SETS+=(--set "data.dataset=npz:$DATA_DIR/cifar10-train-5k.npz")
else
    echo "# no cifar10-train-5k.npz (shared-data/, shared/data/, ../shared/data/): using shapes10"
fi
if command -v nvidia-smi > /dev/null 2>&1; then
    run "$OUT/nvidia-smi.txt" nvidia-smi
fi

MODES=()
for mode in $COMPILE_MODES; do MODES+=(--compile-mode "$mode"); done
PERF_METHODS=()
for method in ${GPU_CHECK_PERF_METHODS:-}; do PERF_METHODS+=(--method "$method"); done

status=0
run "$OUT/doctor.log" timeout -k 15 "$DOCTOR_SECONDS" "${BENCH[@]}" doctor --device cuda "${MODES[@]}" \
    "${SETS[@]}" --json "$OUT/doctor.json"
doctor_rc=$?
[ "$doctor_rc" = 0 ] || status=$doctor_rc
run "$OUT/perf.log" timeout -k 15 "$PERF_SECONDS" "${BENCH[@]}" perf --preset paper --arch wrn-28-10 --device cuda \
    --steps 10 "${PERF_METHODS[@]}" "${SETS[@]}" --json "$OUT/perf.json"
perf_rc=$?
[ "$status" != 0 ] || status=$perf_rc

echo "# bench doctor exit $doctor_rc, bench perf exit $perf_rc (124: stopped by its time limit; its JSON keeps what finished)"
[ "$DRY" = 1 ] || ls -l "$OUT"
exit "$status"
