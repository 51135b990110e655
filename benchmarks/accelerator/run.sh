#!/usr/bin/env bash
# Run benchmark cells on another machine (e.g. a GPU box without internet) and pack what they produced, so
# that it can be copied back and merged (docs/benchmarks.md, "On a machine without internet").
#
#   bash benchmarks/accelerator/run.sh SUITE.yaml [bench arguments, e.g. --jobs 8 --only 'SASRec-L']
#
# Run it there, in a copy of a checkout prepared with prepare.sh (it works in the repository root). Steps:
# install the wheels in .whl/ into $SITE if `recbole` cannot be imported; print python/torch/CUDA; run
# `python -m recbole_kd bench SUITE --data_path .device-data --out $BENCH_OUT ARGS` (cells use CUDA when torch
# sees a GPU: RecBole's use_gpu/gpu_id defaults, gpu_id '0'); always (on exit, and every SNAPSHOT_S seconds a
# cells-only pack in case the script is killed) pack new cells, logs and teacher checkpoints into $OUT with
# `bench SUITE --pack $OUT $PACK_ARGS` (cells.tar.gz, logs.tar.gz, teacher-*.tar*; this script's log is
# run.log there). Copy $OUT back and merge it: `python -m recbole_kd bench SUITE --merge DIR`.
#
# Environment (all optional):
#   OUT           folder the packed files go to (default /tmp/recbole-kd-out)
#   PACK_ARGS     the limits of the way you copy files back, as `bench --pack` options, e.g.
#                 PACK_ARGS="--max-file-mib 25 --max-files 10 --max-total-mib 200" (files already in $OUT, such as
#                 run.log, count); default: no limits
#   RUN_BUDGET_S  seconds this script may take in all (default: no limit); the bench is interrupted
#                 PACK_RESERVE_S (default 45) before, finished cells kept, so that packing happens within it
#   BENCH_OUT     the bench output folder (default /tmp/recbole-kd-bench/<suite name>: outside the checkout,
#                 so running the script again on the same machine resumes); it is first filled with the
#                 checkout's finished cells of the suite, which are then skipped, not run again, nor packed
#   DEVICE_DATA   data folder (default .device-data, filled by prepare.sh; relative to the repository root)
#   SITE          where wheels are installed (default /tmp/site)
#   PYTHON        python to use (default python3)
#   SNAPSHOT_S    seconds between cells-only packs into $OUT while the bench runs (default 60; 0: none)
#   SMOKE=1       first a one-epoch KD-SASRec run on the embedded ml-100k (teacher included, ~1 min on
#                 a CPU): stops here, before the cells, if it fails or does not run on the GPU torch sees
set -u
started=$(date +%s)
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
if [ $# -lt 1 ]; then
    echo "usage: bash benchmarks/accelerator/run.sh SUITE.yaml [bench arguments]" >&2
    exit 2
fi
SUITE=$(realpath "$1")  # before the cd: a relative path is relative to the caller
shift
cd "$ROOT"
for a in "$@"; do
    case $a in --out|--out=*) echo "run.sh: use BENCH_OUT=DIR instead of --out" >&2; exit 2 ;; esac
done
PY=${PYTHON:-python3}
OUT=${OUT:-/tmp/recbole-kd-out}
BUDGET=${RUN_BUDGET_S:-}
DATA=${DEVICE_DATA:-$ROOT/.device-data}
SITE=${SITE:-/tmp/site}
PACK_RESERVE=${PACK_RESERVE_S:-45}  # seconds kept for packing after the bench is interrupted
mkdir -p "$OUT"
exec 3>&1 4>&2 > >(tee -a "$OUT/run.log") 2>&1
tee_pid=$!
export PYTHONUNBUFFERED=1

bench_rc=none
snapshot_pid=
BENCH_OUT=${BENCH_OUT:-}
stop_snapshots=$(mktemp -u /tmp/recbole-kd-stop.XXXXXX)
pack() {
    if [ -n "$snapshot_pid" ]; then  # let a snapshot being written finish, then stop the loop
        touch "$stop_snapshots"
        wait "$snapshot_pid" 2>/dev/null
        rm -f "$stop_snapshots"
    fi
    if [ -n "$BENCH_OUT" ] && [ -d "$BENCH_OUT" ]; then
        # shellcheck disable=SC2086  # PACK_ARGS: options, split on spaces
        "$PY" -m recbole_kd bench "$SUITE" --out "$BENCH_OUT" --pack "$OUT" --since "$started" \
            --note "bench_rc=$bench_rc" ${PACK_ARGS:-} || echo "[run.sh] packing failed" >&2
    else
        echo "[run.sh] nothing to pack (the bench did not start)" >&2
    fi
    echo "[run.sh] done in $(( $(date +%s) - started )) s; bench exit status: $bench_rc"
    exec 1>&3 2>&4 3>&- 4>&-  # let tee write the last lines into run.log before the command returns
    wait "$tee_pid" 2>/dev/null
}
trap pack EXIT
trap 'exit 130' INT TERM

# 1. packages: torch, numpy, pandas, scipy, ... are expected here; recbole and two of its imports may come as wheels
if ! "$PY" -c "import recbole" 2>/dev/null; then
    ls .whl/*.whl >/dev/null 2>&1 || { echo "[run.sh] recbole is not installed and .whl/ has no wheels: run benchmarks/accelerator/prepare.sh on a machine with internet and copy .whl/ along" >&2; exit 3; }
    echo "[run.sh] installing $(ls .whl/*.whl | xargs -n1 basename | tr '\n' ' ')into $SITE"
    "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$SITE" .whl/*.whl || exit 3
    export PYTHONPATH="$SITE${PYTHONPATH:+:$PYTHONPATH}"
fi
export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"
if ! git -C "$ROOT" rev-parse --short HEAD >/dev/null 2>&1 && [ -f "$DATA/COMMIT" ]; then
    export RECBOLE_KD_GIT_COMMIT=$(cat "$DATA/COMMIT")
fi

# 2. what we run on
"$PY" - <<'EOF' || exit 3
import sys, torch
cuda = torch.cuda.is_available()
print(f"[run.sh] python {sys.version.split()[0]}, torch {torch.__version__}, CUDA available: {cuda}"
      + (f", {torch.cuda.device_count()} x {torch.cuda.get_device_name(0)}" if cuda else " (cells run on the CPU)"))
import numpy, recbole, recbole_kd  # recbole_kd applies its compatibility shims on import
print(f"[run.sh] numpy {numpy.__version__}, recbole {recbole.__version__} from {recbole.__file__}")
EOF
command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,memory.used,memory.total --format=csv,noheader

# 2b. optional smoke run: the package's GPU path fails fast rather than in every cell
if [ "${SMOKE:-0}" = 1 ]; then
    smoke=$(mktemp -d /tmp/recbole-kd-smoke.XXXXXX)
    echo "[run.sh] smoke: KD-SASRec on ml-100k, 1 epoch (teacher 1 epoch) in $smoke"
    ( cd "$smoke" && "$PY" -m recbole_kd --model=KD-SASRec --dataset=ml-100k --epochs=1 \
        "--teacher_config={'epochs': 1, 'hidden_size': 64, 'inner_size': 128}" --show_progress=False \
        --state=WARNING --checkpoint_dir="$smoke/saved" --result_file="$smoke/result.json" > "$smoke/smoke.log" 2>&1 )
    smoke_rc=$?
    "$PY" - "$smoke/result.json" "$smoke_rc" <<'EOF' || { tail -n 30 "$smoke/smoke.log"; cp "$smoke/smoke.log" "$OUT/"; exit 5; }
import json, sys, torch
if sys.argv[2] != "0":
    sys.exit(f"[run.sh] smoke run failed (exit status {sys.argv[2]}); its log:")
r = json.load(open(sys.argv[1]))
used, want = r["machine"]["device"], "cuda" if torch.cuda.is_available() else "cpu"
print(f"[run.sh] smoke ok on {used}: test NDCG@10 {r['test_result']['ndcg@10']:.4f}, "
      f"{r['train_seconds']:.1f} s training, {r.get('teacher_source', '?')} teacher")
if used != want:
    sys.exit(f"[run.sh] smoke run used {used}, but torch sees {want}")
EOF
fi

# 3. where the suite's results go
info=$("$PY" -c 'import sys
from recbole_kd.bench import load_suite, output_dir
s = load_suite(sys.argv[1]); print(s["name"]); print(output_dir(s, None))' "$SUITE") || exit 2
name=$(echo "$info" | sed -n 1p)
REPO_OUT=$(echo "$info" | sed -n 2p)
BENCH_OUT=${BENCH_OUT:-/tmp/recbole-kd-bench/$name}
mkdir -p "$BENCH_OUT/cells"
if [ -d "$REPO_OUT/cells" ]; then  # finished cells of the repository: skipped, not run again
    cp -n "$REPO_OUT"/cells/*.json "$BENCH_OUT/cells/" 2>/dev/null
fi
echo "[run.sh] suite $name: bench output $BENCH_OUT ($(ls "$BENCH_OUT/cells" | wc -l) cell files there before the run)"

# 4. a cells-only pack every SNAPSHOT_S seconds: if the script is killed before it packs, these are in $OUT
if [ "${SNAPSHOT_S:-60}" -gt 0 ]; then
    ( n=0
      while [ ! -e "$stop_snapshots" ]; do
          sleep 2; n=$((n + 2))
          if [ "$n" -ge "${SNAPSHOT_S:-60}" ]; then
              n=0
              # shellcheck disable=SC2086
              "$PY" -m recbole_kd bench "$SUITE" --out "$BENCH_OUT" --pack "$OUT" --cells-only \
                  --note "snapshot=1" ${PACK_ARGS:-} >/dev/null 2>&1
          fi
      done ) &
    snapshot_pid=$!
fi

# 5. the cells
data_args=(--data_path "$DATA")
for a in "$@"; do case $a in --data_path|--data_path=*) data_args=() ;; esac; done
if [ -z "$BUDGET" ]; then
    "$PY" -m recbole_kd bench "$SUITE" --out "$BENCH_OUT" "${data_args[@]}" "$@"
    bench_rc=$?
    exit "$bench_rc"
fi
left=$(( BUDGET - ($(date +%s) - started) - PACK_RESERVE ))
if [ "$left" -lt 30 ]; then
    echo "[run.sh] only $left s left of RUN_BUDGET_S=$BUDGET: not starting the bench" >&2
    exit 4
fi
echo "[run.sh] bench gets $left s (then it is interrupted; finished cells are kept, the running one is lost)"
timeout -k 20 -s INT "$left" "$PY" -m recbole_kd bench "$SUITE" --out "$BENCH_OUT" "${data_args[@]}" "$@"
bench_rc=$?
case $bench_rc in 124|130|137) echo "[run.sh] the bench ran out of its $left s budget (status $bench_rc)" >&2 ;; esac
exit "$bench_rc"
