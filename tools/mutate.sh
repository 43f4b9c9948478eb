#!/usr/bin/env bash
# Mutation testing of the request path, the store and the prune job (mutmut 3), on demand; not in CI.
#
#   tools/mutate.sh [--head | --source DIR] [--all-backends] [--jobs N] [--report FILE] [--keep]
#                   [MUTANT_OR_GLOB ...]
#   tools/mutate.sh --report-only SCRATCH_DIR [--report FILE] [MUTANT_OR_GLOB ...]
#
# Runs in a scratch copy of the project (the working tree's tracked and
# untracked, not ignored, files; --head: the last commit; --source: a copy of
# the project elsewhere), with mutation/setup.cfg as its setup.cfg, so
# mutmut's mutants/ directory never lands in the checkout. mutmut mutates
# the modules listed in mutation/setup.cfg (session.py, saving.py, cookies.py, manager.py,
# middleware.py, store.py, prune.py; or the mutants named, e.g.
# 'wsgi_dbsession.store*'), and runs against each mutant the tests of the fast
# files (see mutation/setup.cfg) that call the mutated function, on SQLite and PostgreSQL (--all-backends:
# MariaDB too, half as long again; meant for re-checking survivors, by name).
# The PostgreSQL and MariaDB of conftest.py must be reachable. Needs mutmut 3
# in .venv: .venv/bin/pip install 'mutmut>=3,<4'.
#
# Prints the score, and writes it with every surviving mutant's diff (and, last,
# every mutant's status) to --report FILE (default:
# $TMPDIR/wsgi-dbsession-mutation.txt); given MUTANT_OR_GLOBs, the score and the
# report count only the mutants they name. --keep keeps the scratch
# copy (then `cd` there and `mutmut browse`, or --report-only it again).
# MUTATE_TIMEOUT (seconds, default 5400) bounds the run; it runs under `nice`,
# with --jobs (default 2) test processes at a time.
set -euo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
mutmut=${MUTMUT:-$root/.venv/bin/mutmut}

usage() { sed -n '2,26p' "$0"; }

copy_project() {  # copy_project WORK: the sources to mutate, and the mutmut configuration
    local work=$1
    if [ -n "$source" ]; then
        label="$source"
        (cd "$source" && tar -c --exclude=.git --exclude=.venv --exclude=__pycache__ --exclude=mutants -f - .) |
            tar -x -C "$work"
    elif [ "$head" = 1 ]; then
        label="commit $(git -C "$root" rev-parse --short HEAD)"
        git -C "$root" archive HEAD | tar -x -C "$work"
    else
        label="the working tree on commit $(git -C "$root" rev-parse --short HEAD)"
        (cd "$root" && git ls-files -z --cached --others --exclude-standard |
            while IFS= read -r -d '' f; do [ -f "$f" ] && printf '%s\0' "$f"; done |
            tar -c --null -T - -f -) | tar -x -C "$work"
    fi
    if [ "$all_backends" = 1 ]; then  # drop the -k that leaves MariaDB out
        awk '$1 == "-k" { skip = 1; next } skip { skip = 0; next } { print }' \
            "$root/mutation/setup.cfg" > "$work/setup.cfg"
    else
        cp "$root/mutation/setup.cfg" "$work/setup.cfg"
    fi
}

only_named() {  # the lines of `mutmut results` whose mutant matches one of $names (all without names)
    local line name pattern
    while IFS= read -r line; do
        name=${line%%: *}
        name=${name#"${name%%[![:space:]]*}"}
        if [ ${#names[@]} = 0 ]; then printf '%s\n' "$line"; continue; fi
        for pattern in "${names[@]}"; do
            # shellcheck disable=SC2053  # $pattern is a glob, as mutmut reads it
            if [[ $name == $pattern ]]; then printf '%s\n' "$line"; break; fi
        done
    done
}

write_report() {  # write_report WORK HEADER: the score, the survivors' diffs and every status, into $report
    local work=$1 header=$2 name statuses
    cd "$work"
    statuses=$("$mutmut" results --all true | only_named)
    {
        echo "$header"
        printf '%s\n' "$statuses" | awk '
            /: / { n = split($0, parts, ": "); status = parts[n]; count[status]++; total++ }
            END {
                killed = count["killed"] + count["timeout"] + count["caught by type check"]
                checked = total - count["not checked"] - count["skipped"]
                for (s in count) printf "  %-22s %d\n", s, count[s]
                printf "score: %d killed of %d checked (%.1f%%); %d mutants in all\n",
                    killed, checked, checked ? 100 * killed / checked : 0, total
            }'
        echo
        printf '%s\n' "$statuses" | awk -F': ' '/: (survived|no tests)$/ { gsub(/^ +/, "", $1); print $1 }' |
            while IFS= read -r name; do
                echo "== $name"
                "$mutmut" show "$name" | sed -n '/^@@/,$p'
            done
        # Every mutant's status, for mutation/survivors.py to merge a re-check by name into this run.
        echo "## statuses"
        printf '%s\n' "$statuses"
    } > "$report.tmp"
    mv "$report.tmp" "$report"
    sed -n '1,/^$/p' "$report"
    echo "the score and the surviving mutants with their diffs: $report"
}

main() {
    local jobs=2 keep=0 work status started elapsed report_only=
    names=()
    head=0 all_backends=0 source= label=
    report=${TMPDIR:-/tmp}/wsgi-dbsession-mutation.txt
    while [ $# -gt 0 ]; do
        case $1 in
            --head) head=1 ;;
            --keep) keep=1 ;;
            --all-backends) all_backends=1 ;;
            --jobs) jobs=$2; shift ;;
            --source) source=$(cd "$2" && pwd); shift ;;
            --report) report=$(cd "$(dirname "$2")" && pwd)/$(basename "$2"); shift ;;
            --report-only) report_only=$(cd "$2" && pwd); shift ;;
            -h|--help) usage; exit 0 ;;
            -*) usage >&2; exit 2 ;;
            *) names+=("$1") ;;
        esac
        shift
    done
    if [ ! -x "$mutmut" ]; then
        echo "mutmut not found at $mutmut: .venv/bin/pip install 'mutmut>=3,<4'" >&2
        exit 2
    fi
    if [ -n "$report_only" ]; then
        write_report "$report_only" "mutmut results in $report_only"
        exit 0
    fi

    work=$(mktemp -d "${TMPDIR:-/tmp}/wsgi-dbsession-mutate.XXXXXX")
    # shellcheck disable=SC2064  # $work and $keep are fixed from here on
    trap "if [ $keep = 0 ]; then rm -rf '$work'; else echo 'scratch copy kept: $work'; fi" EXIT
    copy_project "$work"
    cd "$work"
    started=$(date +%s)
    status=0
    timeout --signal=INT --kill-after=60 "${MUTATE_TIMEOUT:-5400}" \
        nice -n 10 "$mutmut" run --max-children "$jobs" ${names[@]+"${names[@]}"} || status=$?
    elapsed=$(( $(date +%s) - started ))
    write_report "$work" "mutmut run of $label, $([ "$all_backends" = 1 ] && echo 'every backend' || echo 'SQLite and PostgreSQL'),
on $(date -u +%Y-%m-%dT%H:%MZ): ${elapsed} s, ${jobs} jobs, exit ${status}${names[0]+
mutants: $(if [ ${#names[@]} -le 4 ]; then echo "${names[*]}"; else echo "${#names[@]} named on the command line"; fi)}"
    exit "$status"
}

main "$@"
