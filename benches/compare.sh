#!/usr/bin/env bash
# Compares framegate with other WebSocket echo servers under `framegate load`, with the server
# and the client pinned to different cores. See benches/README.md for what each table means.
#
# Servers: framegate (`serve --backend echo`, JSON checks and auth off), fastwebsockets 0.10
# and tokio-tungstenite 0.28 (benches/peers, a separate Cargo project), uWebSockets through
# Bun.serve, and Node's ws (both installed with npm into benches/peers/node).
#
# Environment (all optional):
#   DURATION=5          seconds of load per cell, after the ramp
#   SERVER_CPU=0        core for the server (taskset -c)
#   CLIENT_CPU=1        core(s) for framegate load
#   PORT=29400          first port tried; the next one that no socket uses is taken (keep it
#                       below the ephemeral range, 32768 and up by default)
#   ROUNDS=1            runs per cell; the order of the servers rotates between runs
#   SERVERS="framegate fastwebsockets tungstenite bun-uws node-ws"
#   TABLES="peers checks memory"
#   MEMORY_COUNTS="10000 50000"       idle connections held for the memory table
#   MEMORY_MESSAGE_COUNTS=10000        counts also measured after one 10 KB message each
#   NICE=0              nice value for server and client; a negative value (root only) keeps
#                       other work on a shared machine from delaying their wake-ups
#   OUT=target/compare  where JSON summaries, server logs and results.md go
#   SKIP_BUILD=1        reuse the binaries already built
#   CARGO_TARGET_DIR    honoured for both builds (the peers build goes to its peers/ folder)
#   FRAMEGATE_BIN       framegate binary to run (default: the release build)
#   PEERS_BIN_DIR       folder with fastwebsockets-echo and tungstenite-echo
#
# Usage: [VAR=value ...] bash benches/compare.sh   (--help prints this text)
set -euo pipefail
case "${1:-}" in
    -h | --help)
        # The comment block above is the help text.
        sed -n '2,/^set -euo pipefail$/p' "$0" | sed '$d; s/^# \{0,1\}//'
        exit 0
        ;;
    "") ;;
    *)
        echo "error: unknown argument '$1': the script takes no arguments; set the environment variables that --help lists" >&2
        exit 2
        ;;
esac
cd "$(dirname "$0")/.."
root=$PWD

duration=${DURATION:-5}
server_cpu=${SERVER_CPU:-0}
client_cpu=${CLIENT_CPU:-1}
port=${PORT:-29400}
rounds=${ROUNDS:-1}
servers=${SERVERS:-"framegate fastwebsockets tungstenite bun-uws node-ws"}
tables=${TABLES:-"peers checks memory"}
memory_counts=${MEMORY_COUNTS:-"10000 50000"}
out=${OUT:-$root/target/compare}
niceness=${NICE:-0}
# Each connection needs a descriptor on each side. Raising the hard limit needs
# CAP_SYS_RESOURCE, so the cells use whatever hard limit the shell has.
nofile=$(ulimit -Hn)
[ "$nofile" = unlimited ] && nofile=1048576
secret="compare-sh-hmac-secret-of-at-least-32-bytes"
export FRAMEGATE_JWT_SECRET=$secret

target_dir=${CARGO_TARGET_DIR:-$root/target}
peers_target=${CARGO_TARGET_DIR:+$CARGO_TARGET_DIR/peers}
peers_target=${peers_target:-$root/benches/peers/target}
framegate=${FRAMEGATE_BIN:-$target_dir/release/framegate}
peers_bin=${PEERS_BIN_DIR:-$peers_target/release}
node_dir=$root/benches/peers/node
bun=$node_dir/node_modules/@oven/bun-linux-x64/bin/bun

mkdir -p "$out"
start_load=$(cut -d' ' -f1-3 /proc/loadavg)
results=$out/results.tsv
: > "$results"

if [ "${SKIP_BUILD:-0}" != 1 ]; then
    echo "== building framegate and the peer servers" >&2
    cargo build --release --bin framegate
    CARGO_TARGET_DIR=$peers_target cargo build --release --manifest-path benches/peers/Cargo.toml
    (cd "$node_dir" && npm install --no-audit --no-fund --silent)
fi

# Framegate configurations: plain echo (comparable with the peers) and echo or relay with
# every check on, rate limits high enough never to trigger.
config_dir=$(mktemp -d)
trap 'stop_server; rm -rf "$config_dir"' EXIT
write_config() { # name backend checks
    local name=$1 backend=$2 checks=$3
    {
        echo "listen = \"127.0.0.1:PORT\""
        echo "$admin_line"
        echo "workers = 1"
        echo "backend = \"$backend\""
        echo "max_connections = 200000"
        echo "upgrade_rate_per_ip = 0"
        if [ "$checks" = on ]; then
            echo "json = true"
            echo "rate_per_sec = 1000000"
            echo "burst = 1000000"
            echo "[auth]"
            echo "required = true"
        else
            echo "json = false"
            echo "rate_per_sec = 0"
            echo "[auth]"
            echo "required = false"
        fi
    } > "$config_dir/$name.toml"
}
# Servers that have an admin listener get it switched off, so runs never collide on its port.
admin_line='admin_listen = ""'
printf 'listen = "127.0.0.1:1"\n%s\n' "$admin_line" > "$config_dir/probe.toml"
if ! "$framegate" check-config "$config_dir/probe.toml" > /dev/null 2>&1; then
    admin_line=""
fi
write_config plain echo off
write_config checked-echo echo on
write_config checked-relay relay on

server_pid=
server_port=

free_port() {
    while ss -Htan "sport = :$port" | grep -q .; do
        port=$((port + 1))
    done
    server_port=$port
    port=$((port + 1))
}

wait_listening() {
    for _ in $(seq 1 100); do
        if ss -Htln "sport = :$server_port" | grep -q .; then
            return 0
        fi
        if ! kill -0 "$server_pid" 2>/dev/null; then
            echo "server exited during start-up; see $out/server.log" >&2
            return 1
        fi
        sleep 0.1
    done
    echo "server did not listen on $server_port within 10 s" >&2
    return 1
}

start_server() { # name [framegate config]
    local name=$1 config=${2:-plain}
    free_port
    # The case statement runs in a background subshell; each branch execs, so $! is the
    # server's own PID, which cpu_ticks, rss_kib and stop_server need.
    local pin=(nice -n "$niceness" taskset -c "$server_cpu" prlimit --nofile=$nofile:$nofile)
    case $name in
        framegate*)
            sed "s/PORT/$server_port/" "$config_dir/$config.toml" > "$config_dir/run.toml"
            FRAMEGATE_LOG=warn exec "${pin[@]}" "$framegate" serve --config "$config_dir/run.toml" ;;
        fastwebsockets)
            exec "${pin[@]}" "$peers_bin/fastwebsockets-echo" "127.0.0.1:$server_port" ;;
        tungstenite)
            exec "${pin[@]}" "$peers_bin/tungstenite-echo" "127.0.0.1:$server_port" ;;
        bun-uws)
            exec "${pin[@]}" "$bun" "$node_dir/bun-echo.js" "$server_port" ;;
        node-ws)
            exec "${pin[@]}" node "$node_dir/ws-echo.js" "$server_port" ;;
        *) echo "unknown server $name" >&2; return 1 ;;
    esac > "$out/server.log" 2>&1 &
    server_pid=$!
    wait_listening
}

stop_server() {
    if [ -n "$server_pid" ] && kill -0 "$server_pid" 2>/dev/null; then
        kill "$server_pid" 2>/dev/null || true
        wait "$server_pid" 2>/dev/null || true
    fi
    server_pid=
}

# utime + stime of the server process in clock ticks (fields 14 and 15 of /proc/PID/stat).
cpu_ticks() {
    awk '{ print $14 + $15 }' "/proc/$server_pid/stat"
}

rss_kib() {
    awk '/^VmRSS:/ { print $2 }' "/proc/$server_pid/status"
}

vsz_kib() {
    awk '/^VmSize:/ { print $2 }' "/proc/$server_pid/status"
}

# Writes "unix-ms cpu-ticks" every 100 ms while $out/sampling exists, so the report can take
# the server's CPU time over the load's steady window (after the ramp, before the drain).
sample_cpu() {
    while [ -e "$out/sampling" ] && [ -r "/proc/$server_pid/stat" ]; do
        printf '%s %s\n' "$(date +%s%3N)" "$(cpu_ticks)"
        sleep 0.1
    done
}

# run_cell table scenario server config -- load options...
run_cell() {
    local table=$1 scenario=$2 server=$3 config=$4
    shift 5
    local json=$out/$table-$scenario-$server-$config-r$round.json
    local samples=${json%.json}.cpu
    start_server "$server" "$config"
    touch "$out/sampling"
    sample_cpu > "$samples" &
    local sampler=$!
    local before after
    before=$(cpu_ticks)
    nice -n "$niceness" taskset -c "$client_cpu" prlimit --nofile=$nofile:$nofile "$framegate" load \
        "ws://127.0.0.1:$server_port/ws" --duration "$duration" --json "$json" --quiet "$@" \
        > "$out/load.log" 2>&1 || echo "load exited with $? for $table/$scenario/$server" >&2
    after=$(cpu_ticks)
    rm -f "$out/sampling"
    wait "$sampler" || true
    stop_server
    printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$table" "$scenario" "$server" "$config" \
        "$round" "$((after - before))" "$json" "$samples" >> "$results"
    echo "   $table $scenario $server ($config): $(jq -r '"\(.received.messages_per_sec|floor) msg/s, \(.handshakes_per_sec|floor) handshakes/s, p99 \(.latency_us.p99) us, errors \(.error_total)"' "$json" 2>/dev/null || echo 'no summary')" >&2
}

# Scenario options: name, then the load options.
scenario_options() { # scenario auth
    local auth=$2
    case $1 in
        echo-64) echo "--connections 100 --size 64 --window 16 $auth" ;;
        echo-1k) echo "--connections 100 --size 1024 --window 16 $auth" ;;
        idle-10k) echo "--connections 10000 --active-ratio 0.01 --size 64 --window 16 --ramp 2000 $auth" ;;
        connect) echo "--scenario connect --connections 32 $auth" ;;
        relay-64) echo "--scenario relay --connections 100 --size 64 --window 16 $auth" ;;
        relay-idle-10k) echo "--scenario relay --connections 10000 --active-ratio 0.01 --size 64 --window 16 --ramp 2000 $auth" ;;
    esac
}

rotate() { # list shift
    local -a items
    read -r -a items <<< "$1"
    local n=${#items[@]} i
    for ((i = 0; i < n; i++)); do
        printf '%s ' "${items[$(((i + $2) % n))]}"
    done
}

scenarios="echo-64 echo-1k idle-10k connect"
for round in $(seq 1 "$rounds"); do
    if [[ " $tables " == *" peers "* ]]; then
        index=0
        for scenario in $scenarios; do
            echo "== peers: $scenario (round $round)" >&2
            for server in $(rotate "$servers" $((index + round - 1))); do
                auth=--no-auth
                # shellcheck disable=SC2046
                run_cell peers "$scenario" "$server" plain -- $(scenario_options "$scenario" "$auth --raw")
            done
            index=$((index + 1))
        done
    fi
    if [[ " $tables " == *" checks "* ]]; then
        for scenario in $scenarios relay-64 relay-idle-10k; do
            echo "== framegate checks: $scenario (round $round)" >&2
            case $scenario in
                relay-*) configs="checked-relay" ;;
                *) configs="plain checked-echo" ;;
            esac
            for config in $configs; do
                if [ "$config" = plain ]; then
                    auth="--no-auth --raw"
                else
                    auth=""
                fi
                # shellcheck disable=SC2046
                run_cell checks "$scenario" framegate "$config" -- $(scenario_options "$scenario" "$auth")
            done
        done
    fi
done

# Memory: resident set growth per connection, idle right after the upgrade, and after each
# connection has sent one 10,000-byte message (so the pages of its read buffer were written).
memory=$out/memory.tsv
: > "$memory"
message_counts=${MEMORY_MESSAGE_COUNTS:-10000}
memory_cell() { # count server state
    local count=$1 server=$2 state=$3 name config auth
    case $server in
        framegate) name=framegate; config=checked-echo; auth="" ;;
        framegate-4k) name=framegate; config=checked-echo-4k; auth="" ;;
        *) name=$server; config=plain; auth="--no-auth --raw" ;;
    esac
    local traffic="--active-ratio 0"
    if [ "$state" = message ]; then
        # Each connection sends one message about every 4 s.
        traffic="--rate $((count / 4)) --size 10000"
    fi
    echo "== memory: $count connections, $server, $state" >&2
    start_server "$name" "$config"
    sleep 1
    local base vbase loaded vloaded
    base=$(rss_kib)
    vbase=$(vsz_kib)
    local ramp=2000
    local json=$out/memory-$count-$server-$state.json
    # shellcheck disable=SC2086
    nice -n "$niceness" taskset -c "$client_cpu" prlimit --nofile=$nofile:$nofile "$framegate" load \
        "ws://127.0.0.1:$server_port/ws" --connections "$count" $traffic \
        --ramp $ramp --duration 10 --source-addrs 127.0.0.2-127.0.0.9 \
        --json "$json" --quiet $auth > "$out/load.log" 2>&1 &
    local load_pid=$!
    # Read the sizes a few seconds after the ramp, while every connection is open.
    sleep $((count / ramp + 6))
    loaded=$(rss_kib)
    vloaded=$(vsz_kib)
    wait "$load_pid" || true
    stop_server
    local opened
    opened=$(jq -r .handshakes "$json" 2>/dev/null || echo 0)
    printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$count" "$server" "$state" "$base" "$loaded" \
        "$vbase" "$vloaded" "$opened" >> "$memory"
    echo "   RSS $base -> $loaded KiB, VmSize $vbase -> $vloaded KiB, $opened connections" >&2
}
if [[ " $tables " == *" memory "* ]]; then
    sed 's/^workers = 1$/workers = 1\nread_buffer_bytes = 4096/' \
        "$config_dir/checked-echo.toml" > "$config_dir/checked-echo-4k.toml"
    for count in $memory_counts; do
        if [ "$count" -gt $((nofile - 100)) ]; then
            echo "== memory: skipping $count connections: the open-file hard limit is $nofile" >&2
            printf '%s\tskipped: open-file hard limit %s\t-\t0\t0\t0\t0\t0\n' "$count" "$nofile" >> "$memory"
            continue
        fi
        for server in framegate framegate-4k $(echo "$servers" | sed 's/framegate//'); do
            memory_cell "$count" "$server" idle
            if [[ " $message_counts " == *" $count "* ]]; then
                memory_cell "$count" "$server" message
            fi
        done
    done
fi

{
    echo "machine: $(awk -F': ' '/^model name/ { print $2; exit }' /proc/cpuinfo), $(nproc) cores, Linux $(uname -r)"
    echo "commit: $(git rev-parse --short HEAD 2>/dev/null || echo unknown)$(git diff --quiet HEAD 2>/dev/null || echo ' (with uncommitted changes)')"
    echo "load average at the start: $start_load; at the end: $(cut -d' ' -f1-3 /proc/loadavg)"
    echo "cells: $duration s of load each, server on core $server_cpu, client on core $client_cpu, nice $niceness, $rounds round(s)"
} | tee "$out/results.md"
python3 "$root/benches/peers/report.py" "$results" "$memory" "$(getconf CLK_TCK)" | tee -a "$out/results.md"
