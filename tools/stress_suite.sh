#!/usr/bin/env bash
# The suite under load: two copies of it at once on this machine, several rounds (issue 18,
# acceptance 3: "the suite passes 3 times in a row while another copy of it runs at the same
# time on the same machine").
#
#   tools/stress_suite.sh [--rounds N] [--ref REF] [--keep] [-- PYTEST_ARGS ...]
#
# Clones REF (default HEAD: what is committed, not the working tree) twice into a
# scratch directory, then runs `python -m pytest PYTEST_ARGS` (default: the whole
# suite, as .ci/run does) in both clones at the same time, N rounds (default 3).
# Both use this checkout's .venv; PYTHONPATH points each at its own clone, so the
# servers and scripts the tests start import the clone's package too. The two
# copies share the live PostgreSQL and MariaDB (and the services of .ci/services.sh)
# as two CI jobs on one host would. Every round of both copies must pass.
#
# Logs: <scratch>/logs/round<K>-<copy>.log; the scratch directory is removed when
# every run passed, kept otherwise (or with --keep). Exit status 0 only when all
# 2 x N runs passed.
set -euo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
python=${PYTHON:-$root/.venv/bin/python}
rounds=3
ref=HEAD
keep=0
while [ $# -gt 0 ]; do
    case $1 in
        --rounds) rounds=$2; shift ;;
        --ref) ref=$2; shift ;;
        --keep) keep=1 ;;
        --) shift; break ;;
        -h|--help) sed -n '2,20p' "$0"; exit 0 ;;
        *) echo "unknown option $1 (pytest arguments go after --)" >&2; exit 2 ;;
    esac
    shift
done
pytest_args=("$@")

rev=$(git -C "$root" rev-parse --verify "$ref^{commit}")
work=$(mktemp -d "${TMPDIR:-/tmp}/wsgi-dbsession-stress.XXXXXX")
mkdir "$work/logs"
for copy in a b; do
    git clone --quiet "$root" "$work/$copy"
    git -C "$work/$copy" checkout --quiet --detach "$rev"
done
echo "commit $(git -C "$root" log -1 --format='%h %s' "$rev")"
echo "two copies in $work; $rounds rounds of: python -m pytest ${pytest_args[*]:-(the whole suite)}"

run_copy() {  # run_copy COPY ROUND: the suite in one clone; its exit status
    local copy=$1 round=$2
    (
        cd "$work/$copy"
        PYTHONPATH="$work/$copy" exec "$python" -m pytest -p no:cacheprovider ${pytest_args[@]+"${pytest_args[@]}"}
    ) > "$work/logs/round$round-$copy.log" 2>&1
}

failed=0
for round in $(seq "$rounds"); do
    started=$(date +%s)
    run_copy a "$round" & a=$!
    run_copy b "$round" & b=$!
    status_a=0; wait "$a" || status_a=$?
    status_b=0; wait "$b" || status_b=$?
    elapsed=$(( $(date +%s) - started ))
    for copy in a b; do
        status=$([ "$copy" = a ] && echo "$status_a" || echo "$status_b")
        log="$work/logs/round$round-$copy.log"
        echo "round $round, copy $copy: exit $status after ${elapsed} s: $(tail -n 1 "$log")"
        if [ "$status" != 0 ]; then
            failed=$((failed + 1))
            grep -E '^(FAILED|ERROR) ' "$log" | sed 's/^/    /' || true
        fi
    done
done

if [ "$failed" = 0 ]; then
    echo "all $((2 * rounds)) runs passed"
    if [ "$keep" = 0 ]; then rm -rf "$work"; else echo "kept: $work"; fi
    exit 0
fi
echo "$failed of $((2 * rounds)) runs failed; logs in $work/logs"
exit 1
