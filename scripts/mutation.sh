#!/usr/bin/env bash
# Mutation testing with mutmut 3: scripts/mutation.sh [MODULE ...]
#
# For each MODULE (default: every module in scripts/mutation_targets.txt) it copies the
# working tree (tracked and untracked-but-not-ignored files) to mutation_out/work/<module>/,
# runs `mutmut run` there with only that module mutated and only its tests from
# scripts/mutation_targets.txt, and adds a row to mutation_out/summary.md. The working
# tree's own files are never modified; mutmut's mutants/ dir lives inside the scratch copy.
# Mutants listed in tests/equivalent_mutants.txt count as "equivalent", not "survived".
#
# Not part of the default install or CI: mutmut comes from the `mutation` extra of
# pyproject.toml and is installed into .venv on first use.
# Environment: MUTATION_JOBS (parallel mutants, default min(2, nproc)), PYTHON (default .venv/bin/python),
# MUTATION_TIMEOUT_MULTIPLIER (mutmut's timeout_multiplier, default 3).
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
PYTHON=${PYTHON:-$ROOT/.venv/bin/python}
BIN=$(dirname "$PYTHON")
OUT=$ROOT/mutation_out
TARGETS=$ROOT/scripts/mutation_targets.txt
EQUIVALENTS=$ROOT/tests/equivalent_mutants.txt
JOBS=${MUTATION_JOBS:-$(( $(nproc) < 2 ? $(nproc) : 2 ))}
export OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 OPENBLAS_NUM_THREADS=1

if ! "$PYTHON" -c "import mutmut" 2>/dev/null; then
    # install the `mutation` extra's requirements only (not `pip install .[mutation]`,
    # which would replace the editable install of minkseg)
    mapfile -t REQS < <("$PYTHON" -c "import tomllib; print('\n'.join(tomllib.load(open('pyproject.toml', 'rb'))['project']['optional-dependencies']['mutation']))")
    echo "installing ${REQS[*]} into $(dirname "$BIN")"
    "$BIN/pip" install --quiet "${REQS[@]}"
fi

tests_for() {  # the test files mapped to module $1, or nothing
    awk -v m="$1" '$1 == m { $1 = ""; print }' "$TARGETS"
}

if [ $# -eq 0 ]; then
    mapfile -t MODULES < <(awk '!/^#/ && NF { print $1 }' "$TARGETS")
else
    MODULES=("$@")
fi

status=0
for module in "${MODULES[@]}"; do
    tests=$(tests_for "$module")
    if [ ! -f "$module" ]; then
        echo "$module: no such file (give paths relative to the repository root)" >&2; status=1; continue
    fi
    if [ -z "$tests" ]; then
        echo "$module: no tests listed for it in $TARGETS; add a line '$module tests/test_x.py ...'" >&2
        status=1; continue
    fi
    slug=$(echo "${module%.py}" | tr / _)
    work=$OUT/work/$slug
    rm -rf "$work"; mkdir -p "$work"
    # a snapshot of the working tree as it is now, uncommitted edits included
    git ls-files -z --cached --others --exclude-standard \
        | xargs -0 -I{} sh -c '[ -f "$1" ] && cp --parents "$1" "$2" || true' _ {} "$work"
    {
        echo "[mutmut]"
        echo "source_paths ="
        echo "    minkseg"
        echo "    scannet_tools"
        echo "only_mutate = $module"
        echo "also_copy ="   # tests load configs/*.yaml relative to the mutants/ dir they run in
        echo "    configs"
        echo "pytest_add_cli_args_test_selection ="
        for t in $tests; do echo "    $t"; done
        # mutmut's default (15) lets a mutant stuck in an endless loop burn 30x the tests' CPU
        # time before it counts as "timed out"; a timeout is a catch either way
        echo "timeout_multiplier = ${MUTATION_TIMEOUT_MULTIPLIER:-3}"
        echo "pytest_add_cli_args ="
        echo "    -m"
        echo "    not slow"
        echo "    -p"
        echo "    no:cacheprovider"
    } > "$work/setup.cfg"
    echo "== $module: tests $tests; $JOBS job(s); scratch copy $work"
    start=$(date +%s)
    if ! (cd "$work" && "$BIN/mutmut" run --max-children "$JOBS" > "$work/mutmut_run.log" 2>&1); then
        echo "$module: mutmut run failed; see $work/mutmut_run.log" >&2
        tail -n 30 "$work/mutmut_run.log" >&2
        status=1; continue
    fi
    "$PYTHON" scripts/mutation_summary.py --module "$module" --work "$work" --out "$OUT" \
        --equivalents "$EQUIVALENTS" --mutmut "$BIN/mutmut" --seconds $(( $(date +%s) - start ))
done
echo "table: $OUT/summary.md; surviving mutants' diffs: $OUT/survivors/"
exit $status
