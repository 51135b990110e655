#!/usr/bin/env bash
# Prepare this checkout for running benchmark cells on another machine (e.g. a GPU box without internet);
# run it HERE, in the project's venv. docs/benchmarks.md, "On a machine without internet".
#
#   bash benchmarks/accelerator/prepare.sh SUITE.yaml [bench arguments, e.g. --jobs 8 --only 'SASRec-L']
#
# 1. downloads the wheels the other machine is expected to lack into .whl/ (recbole 1.2.1 and the two modules
#    it imports that are often missing; torch, numpy, pandas, scipy, ... must be there and are not carried);
# 2. copies the atomic files of the datasets the selected cells read into .device-data/ (a shared datasets
#    folder outside the checkout does not travel with it), and the commit into .device-data/COMMIT;
# 3. adds both folders to .git/info/exclude and reports the size of what travels (checkout, wheels, data);
#    with MAX_MIB set, stops if that is more;
# 4. prints the command to run there, and the merge to run here afterwards.
#
# Environment: PYTHON (default python3; must import recbole_kd), WHEELS (default below), WHEEL_PYTHON (the
# other machine's CPython, default 3.12), WHEEL_PLATFORMS (its pip platform tags, default manylinux x86_64),
# MAX_MIB (the most your way of copying files there takes, in MiB; default: no check).
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
cd "$ROOT"
PY=${PYTHON:-python3}
# recbole 1.2.1 imports colorlog and texttable when imported; its other requirements are either on the
# other machine (colorama, psutil, pandas, scipy, scikit-learn, tensorboard, tabulate, tqdm, pyyaml), or
# imported only by code paths we do not use (thop: get_flops; plotly, hyperopt, ray: RecBole's tuning).
WHEELS=${WHEELS:-"recbole==1.2.1 colorlog==4.7.2 texttable==1.7.2"}
WHEEL_PYTHON=${WHEEL_PYTHON:-3.12}
WHEEL_PLATFORMS=${WHEEL_PLATFORMS:-"manylinux_2_28_x86_64 manylinux_2_17_x86_64 manylinux2014_x86_64"}
MAX_MIB=${MAX_MIB:-}
if [ -n "$MAX_MIB" ] && ! awk -v m="$MAX_MIB" 'BEGIN { exit !(m ~ /^[0-9]*\.?[0-9]+$/ && m > 0) }'; then
    echo "prepare.sh: MAX_MIB=$MAX_MIB: give a number of MiB above 0" >&2
    exit 2
fi
if [ $# -lt 1 ]; then
    echo "usage: bash benchmarks/accelerator/prepare.sh SUITE.yaml [bench arguments]" >&2
    exit 2
fi
SUITE=$1
shift
if ! "$PY" -c "import recbole_kd.bench" 2>/dev/null; then
    echo "prepare.sh: $PY cannot import recbole_kd: activate the project's venv (or set PYTHON)" >&2
    exit 2
fi

# which datasets the selected cells read, and where they are here
plan=$("$PY" - "$SUITE" "$@" <<'EOF'
import argparse, os, sys
from recbole_kd.bench.suite import _datasets_needed, expand, load_suite, selected

ap = argparse.ArgumentParser()
ap.add_argument("--only", action="append")
ap.add_argument("--data_path")
args, _ = ap.parse_known_args(sys.argv[2:])
cells = [c for c in expand(load_suite(sys.argv[1])) if c.skip is None and selected(c, args.only)]
if not cells:
    sys.exit(f"prepare.sh: no cell of {sys.argv[1]} to run with {' '.join(sys.argv[2:])}")
where = {}
for c in cells:
    target = args.data_path or c.settings.get("data_path")
    source = c.settings.get("source") if isinstance(c.settings.get("source"), dict) else {}
    for ds in _datasets_needed(c):
        base = target if ds == c.dataset else (args.data_path or source.get("data_path") or target)
        if base is None:  # no data_path: RecBole's own copy (ml-100k ships inside the recbole wheel)
            import recbole
            base = os.path.join(os.path.dirname(recbole.__file__), "dataset_example")
        where.setdefault(ds, os.path.abspath(base))
for ds, base in where.items():
    folder = os.path.join(base, ds)
    if not os.path.isfile(os.path.join(folder, ds + ".inter")):
        sys.exit(f"prepare.sh: {folder}/{ds}.inter not found (run from the repository root, or pass --data_path)")
    print(f"{ds}\t{folder}")
print(f"# {len(cells)} cells selected", file=sys.stderr)
EOF
)

exclude=$(git rev-parse --git-path info/exclude)
mkdir -p "$(dirname "$exclude")"
for p in /.whl/ /.device-data/; do
    grep -qxF "$p" "$exclude" 2>/dev/null || echo "$p" >> "$exclude"
done

platforms=()
for p in $WHEEL_PLATFORMS; do platforms+=(--platform "$p"); done
rm -rf .whl && mkdir .whl
for w in $WHEELS; do
    "$PY" -m pip download -q --no-deps --only-binary=:all: --python-version "$WHEEL_PYTHON" --implementation cp \
        "${platforms[@]}" -d .whl "$w"
done

rm -rf .device-data && mkdir .device-data
while IFS=$'\t' read -r ds folder; do
    cp -r "$folder" ".device-data/$ds"
    chmod -R u+w ".device-data/$ds"
done <<< "$plan"
commit=$(git rev-parse --short HEAD)
[ -z "$(git status --porcelain --untracked-files=no)" ] || commit="$commit+uncommitted"
echo "$commit" > .device-data/COMMIT

echo "wheels (.whl/):"
ls -l .whl | awk 'NR > 1 {printf "  %-50s %8.2f MiB\n", $9, $5 / 1048576}'
echo "data (.device-data/):"
while IFS=$'\t' read -r ds folder; do
    printf "  %-30s %8.2f MiB  (from %s)\n" "$ds" "$(du -sb ".device-data/$ds" | cut -f1 | awk '{print $1 / 1048576}')" "$folder"
done <<< "$plan"
tree=$( { git ls-files -z -co --exclude-standard | xargs -0 -r stat -c %s 2>/dev/null || true; } | awk '{s += $1} END {print s + 0}')
whl=$(du -sb .whl | cut -f1)
data=$(du -sb .device-data | cut -f1)
total=$((tree + whl + data))
awk -v t="$tree" -v w="$whl" -v d="$data" -v s="$total" -v m="$MAX_MIB" 'BEGIN {
    printf "travels: tree %.1f MiB + .whl %.1f MiB + .device-data %.1f MiB = %.1f MiB%s\n",
           t / 1048576, w / 1048576, d / 1048576, s / 1048576, (m == "" ? "" : " (MAX_MIB " m ")") }'
if [ -n "$MAX_MIB" ] && awk -v s="$total" -v m="$MAX_MIB" 'BEGIN { exit !(s > m * 1048576) }'; then
    echo "prepare.sh: that is over MAX_MIB=$MAX_MIB: select fewer cells (and so datasets) with --only" >&2
    exit 1
fi
case $(realpath "$SUITE") in
    "$ROOT"/*) if git check-ignore -q "$SUITE"; then
                   echo "prepare.sh: warning: $SUITE is git-ignored and will not travel" >&2
               fi ;;
    *) echo "prepare.sh: warning: $SUITE is outside the repository and will not travel; copy it in" >&2 ;;
esac

"$PY" - "$SUITE" "$@" <<'EOF'
import os, shlex, sys
suite = os.path.relpath(os.path.realpath(sys.argv[1]))
print("\ncopy this checkout, with .whl/ and .device-data/, to the other machine; there, in its root (SMOKE=1: a "
      "1-epoch KD run on ml-100k first, which stops early if the GPU path fails; PACK_ARGS: the limits of the way "
      "you copy files back, e.g. PACK_ARGS='--max-file-mib 25 --max-files 10'; RUN_BUDGET_S: a time limit; the "
      "header of run.sh lists every variable):")
print("    SMOKE=1 OUT=/path/to/out bash benchmarks/accelerator/run.sh " + shlex.join([suite, *sys.argv[2:]]))
print("then copy /path/to/out back and, here:")
print("    python -m recbole_kd bench " + shlex.quote(suite) + " --merge /path/to/copied/out")
EOF
