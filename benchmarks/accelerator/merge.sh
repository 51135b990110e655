#!/usr/bin/env bash
# Merge cells returned by run.sh on an accelerator into the suite's results, then re-render its report.
#
#   bash benchmarks/accelerator/merge.sh SUITE.yaml SRC [--out DIR] [--force]
#
# SRC: the folder the device tool returned (files_at, holding cells.tar.gz and maybe teacher-*.tar*),
# or cells.tar.gz itself. New cells are added; a finished cell here is never replaced by a failure, and
# one that differs from the accelerator's is kept unless --force. Returned teacher checkpoints are
# unpacked into <results>/work/ (git-ignored) where the merged cells point, so distilled cells can run
# here without training the teacher again. --out: the results folder (default benchmarks/results/<name>).
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
PY=${PYTHON:-python3}
if [ $# -lt 2 ]; then
    echo "usage: bash benchmarks/accelerator/merge.sh SUITE.yaml SRC [--out DIR] [--force]" >&2
    exit 2
fi
SUITE=$1
SRC=$2
shift 2
out_args=()
while [ $# -gt 0 ]; do
    case $1 in
        --out) out_args=(--out "$2"); shift 2 ;;
        --out=*) out_args=(--out "${1#--out=}"); shift ;;
        --force) force=--force; shift ;;
        *) echo "merge.sh: unknown argument $1" >&2; exit 2 ;;
    esac
done
export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"
"$PY" "$ROOT/benchmarks/accelerator/cells.py" merge "$SUITE" "$SRC" "${out_args[@]}" ${force:-}
"$PY" -m recbole_kd bench "$SUITE" "${out_args[@]}" --render-only
