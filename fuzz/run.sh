#!/usr/bin/env bash
# Runs every fuzz target (or the ones named after SECONDS) for SECONDS seconds each with the
# nightly toolchain and libFuzzer, and prints the executions each one reached.
#
#   fuzz/run.sh 30                      # CI smoke run: 30 s per target
#   fuzz/run.sh 600 frame_stream        # one target for 10 minutes
#
# New inputs go to $FUZZ_WORK_DIR/<target> (default fuzz/target/corpus-work), never into the
# committed seeds under fuzz/corpus. Set FUZZ_TARGET_DIR to build elsewhere than fuzz/target.
# Exits non-zero if any target crashes or fails an invariant; the input is then in
# fuzz/artifacts/<target>/ (see fuzz/README.md for turning it into a regression test).
set -euo pipefail

if [ $# -lt 1 ] || ! [[ $1 =~ ^[0-9]+$ ]]; then
    echo "usage: fuzz/run.sh SECONDS [TARGET...]" >&2
    exit 2
fi
seconds=$1
shift
cd "$(dirname "$0")"

if ! cargo +nightly fuzz --version >/dev/null 2>&1; then
    echo "== installing cargo-fuzz (about a minute on 2 cores)"
    cargo install cargo-fuzz --locked
fi

targets=(upgrade_request frame_stream utf8_incremental message_check connection jwt_header upstream_response load_response)
if [ $# -gt 0 ]; then
    targets=("$@")
fi

dictionary() {
    case $1 in
        upgrade_request | jwt_header | upstream_response | load_response) echo dict/http.dict ;;
        frame_stream | connection) echo dict/frame.dict ;;
        message_check) echo dict/json.dict ;;
        *) echo "" ;;
    esac
}

build_args=()
if [ -n "${FUZZ_TARGET_DIR:-}" ]; then
    build_args+=(--target-dir "$FUZZ_TARGET_DIR")
fi
work=${FUZZ_WORK_DIR:-target/corpus-work}
failed=0

for target in "${targets[@]}"; do
    mkdir -p "$work/$target"
    log="$work/$target.log"
    args=(-max_total_time="$seconds" -print_final_stats=1)
    dict=$(dictionary "$target")
    if [ -n "$dict" ]; then
        args+=(-dict="$dict")
    fi

    echo "== $target: ${seconds}s${dict:+, dictionary $dict}"
    status=ok
    if ! cargo +nightly fuzz run "${build_args[@]}" "$target" "$work/$target" "corpus/$target" \
        -- "${args[@]}" >"$log" 2>&1; then
        status=FAILED
        failed=1
    fi

    # libFuzzer prints the count in its final stats, and on the "#N DONE" line.
    execs=$(sed -n 's/^stat::number_of_executed_units: *\([0-9]*\).*/\1/p' "$log" | tail -n 1)
    if [ -z "$execs" ]; then
        execs=$(sed -n 's/^#\([0-9]*\)[[:space:]]*DONE.*/\1/p' "$log" | tail -n 1)
    fi
    printf '%-18s %-7s %14s executions\n' "$target" "$status" "${execs:-unknown}"
    if [ "$status" != ok ]; then
        tail -n 60 "$log"
        echo "full log: $(realpath -m "$log"); failing input: $(realpath -m artifacts/"$target")/"
    fi
done

exit "$failed"
