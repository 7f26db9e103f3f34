#!/usr/bin/env bash
# QoS 1 fan-in through two instances sharing PostgreSQL and Redis: 100
# publishers on instance A, the subscriber on instance B, so every message
# is committed on A, appended to the Redis stream and routed by B. Each run
# starts a fresh database, Redis and both instances. Prints the median and
# spread (min–max) of delivered msgs/s over the rounds; raw JSON stays in
# the temp dir it names.
#
#   scripts/bench-cluster.sh                                  # 3 rounds, 5 s each
#   MAPCAST=/path/to/other/mapcast scripts/bench-cluster.sh --rounds 3
#
# With --cost: the per-message cost of clustering. Each round runs, one
# after the other on fresh databases, (a) one instance on PostgreSQL, not
# clustered, the clients connected to it, and (b) three clustered instances
# behind HAProxy (TCP, leastconn, /readyz checks), publishers and subscriber
# through the balancer; each at 2,000 QoS 1 locations/s (100 publishers ×
# 20/s) and at the highest rate (1 in flight per publisher). Per delivered
# message: the instances' CPU (utime + stime from /proc, summed), Redis
# commands (INFO commandstats), PostgreSQL commits and rows written
# (pg_stat_database), Redis's and HAProxy's CPU, over the whole client run, warmup included. The
# order of (a) and (b) alternates between rounds.
#
#   scripts/bench-cluster.sh --cost --rounds 3 --duration 8
#   CLUSTER_NODES=2 scripts/bench-cluster.sh --cost    # two clustered instances instead
#
# Needs: target/release/mapcast and target/release/mapcast-bench,
# redis-server, psql, curl, jq (and haproxy, redis-cli for --cost), and
# MAPCAST_BENCH_POSTGRES_URL: a PostgreSQL URL whose user may create
# databases (a fresh one per run is made from it).
set -euo pipefail

ROUNDS=3
DURATION=5
WARMUP=2
COST=0
# Instances in the clustered setup of --cost.
CLUSTER_NODES="${CLUSTER_NODES:-3}"
MAPCAST="${MAPCAST:-target/release/mapcast}"
MAPCAST_BENCH="${MAPCAST_BENCH:-target/release/mapcast-bench}"
PG="${MAPCAST_BENCH_POSTGRES_URL:?set MAPCAST_BENCH_POSTGRES_URL}"

while [ $# -gt 0 ]; do
    case "$1" in
        --rounds) ROUNDS="$2"; shift 2 ;;
        --duration) DURATION="$2"; shift 2 ;;
        --cost) COST=1; shift ;;
        *) echo "usage: $0 [--cost] [--rounds N] [--duration S]" >&2; exit 2 ;;
    esac
done

OUT=$(mktemp -d)
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
PIDS=()
cleanup() { for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; }
trap cleanup EXIT


# --cost ------------------------------------------------------------------

# utime + stime of the given processes, in clock ticks.
cpu_ticks() {
    local sum=0 p
    for p in "$@"; do
        # Fields after the command name (which may hold spaces): 12 and 13
        # are utime and stime.
        read -r -a f <<<"$(sed 's/^.*) //' "/proc/$p/stat")"
        sum=$((sum + f[11] + f[12]))
    done
    echo "$sum"
}

# Commands Redis has run (its own INFO calls left out).
redis_calls() {
    redis-cli -p "$1" INFO commandstats |
        awk -F'[:=,]' '/^cmdstat_/ && $1 != "cmdstat_info" { n += $3 } END { print n + 0 }'
}

# Commits and rows written in database $1, as "commits rows".
pg_ops() {
    # Backends report their counters when idle, at most once a second.
    psql -Atq "$PG" -F ' ' -c "SELECT xact_commit, tup_inserted + tup_updated + tup_deleted
        FROM pg_stat_database WHERE datname = '$1'"
}

wait_ready() {
    for _ in $(seq 1 150); do
        curl -sf "http://127.0.0.1:$1/readyz" >/dev/null && return 0
        sleep 0.2
    done
    echo "instance on :$1 never ready" >&2
    exit 1
}

# One client run against $port with the instances ${pids[@]}, database $db
# and Redis $redis_port (0: none): the bench report plus the cost figures,
# one JSON line in $OUT/$1.json.
measure() {
    local name=$1 rate=$2 ticks0 ticks1 redis0=0 redis1=0 pg0 pg1 hap0=0 hap1=0 rcpu0=0 rcpu1=0 hz
    hz=$(getconf CLK_TCK)
    ticks0=$(cpu_ticks "${pids[@]}")
    [ "$redis_port" != 0 ] && redis0=$(redis_calls "$redis_port")
    [ -n "$haproxy_pid" ] && hap0=$(cpu_ticks "$haproxy_pid")
    [ -n "$redis_pid" ] && rcpu0=$(cpu_ticks "$redis_pid")
    sleep 1.2
    pg0=$(pg_ops "$db")
    "$MAPCAST_BENCH" pubsub -p 100 -s 1 -t 'devices/bench-{i}/location' -f 'devices/+/location' \
        -q 1 -r "$rate" --inflight 1 -d "$DURATION" --warmup "$WARMUP" --source-addresses 4 \
        --port "$port" --json 2>/dev/null | tail -n 1 >"$OUT/$name.bench.json"
    ticks1=$(cpu_ticks "${pids[@]}")
    [ "$redis_port" != 0 ] && redis1=$(redis_calls "$redis_port") &&
        redis-cli -p "$redis_port" INFO commandstats >"$OUT/$name.redis.txt"
    [ -n "$haproxy_pid" ] && hap1=$(cpu_ticks "$haproxy_pid")
    [ -n "$redis_pid" ] && rcpu1=$(cpu_ticks "$redis_pid")
    sleep 1.2
    pg1=$(pg_ops "$db")
    jq -c --arg name "$name" --argjson hz "$hz" \
        --argjson cpu "$((ticks1 - ticks0))" --argjson hap "$((hap1 - hap0))" --argjson rcpu "$((rcpu1 - rcpu0))" \
        --argjson redis "$((redis1 - redis0))" \
        --argjson commits "$(( ${pg1% *} - ${pg0% *} ))" --argjson rows "$(( ${pg1#* } - ${pg0#* } ))" \
        --argjson load "$(cut -d' ' -f1 /proc/loadavg)" '
        .totals.delivered as $n | {
            name: $name, load1: $load,
            delivered_per_s, p99_ms: (.latency.p99_us / 1000),
            lost: .totals.lost, duplicates: .totals.duplicates, delivered_total: $n,
            cpu_us_per_msg: ($cpu / $hz * 1e6 / $n),
            haproxy_cpu_us_per_msg: ($hap / $hz * 1e6 / $n),
            redis_cpu_us_per_msg: ($rcpu / $hz * 1e6 / $n),
            redis_ops_per_msg: ($redis / $n),
            pg_commits_per_msg: ($commits / $n),
            pg_rows_per_msg: ($rows / $n)
        }' "$OUT/$name.bench.json" | tee "$OUT/$name.json"
}

start_redis() {
    redis_port=$(free_port)
    redis-server --port "$redis_port" --bind 127.0.0.1 --save "" --appendonly no --dir "$OUT" >/dev/null &
    redis_pid=$!
    PIDS+=($!)
    for _ in $(seq 1 50); do redis-cli -p "$redis_port" PING >/dev/null 2>&1 && return 0; sleep 0.1; done
}

# Instances "$@" (names) on $db, clustered when $redis_port is not 0; fills
# pids and mqtt_ports, http_ports.
start_instances() {
    pids=(); mqtt_ports=(); http_ports=()
    local node cluster_args=()
    [ "$redis_port" != 0 ] && cluster_args=(--cluster-redis-url "redis://127.0.0.1:$redis_port")
    for node in "$@"; do
        local m h
        m=$(free_port); h=$(free_port)
        mkdir -p "$OUT/$db-$node"
        MAPCAST_NODE_ID="$node" "$MAPCAST" serve \
            --mqtt-listen "127.0.0.1:$m" --http-listen "127.0.0.1:$h" \
            --data-dir "$OUT/$db-$node" --database-url "${PG%/*}/$db" "${cluster_args[@]}" \
            >"$OUT/$db-$node.log" 2>&1 &
        pids+=($!); PIDS+=($!); mqtt_ports+=("$m"); http_ports+=("$h")
    done
    for h in "${http_ports[@]}"; do wait_ready "$h"; done
}

start_haproxy() {
    port=$(free_port)
    local cfg="$OUT/$db-haproxy.cfg" i
    {
        printf 'global\n  maxconn 2000\ndefaults\n  timeout connect 2s\n  timeout client 5m\n  timeout server 5m\n'
        printf 'frontend mqtt\n  mode tcp\n  bind 127.0.0.1:%s\n  default_backend nodes\n' "$port"
        printf 'backend nodes\n  mode tcp\n  balance leastconn\n  option httpchk GET /readyz\n  http-check expect status 200\n'
        for i in "${!mqtt_ports[@]}"; do
            printf '  server n%s 127.0.0.1:%s check port %s inter 500ms\n' "$i" "${mqtt_ports[$i]}" "${http_ports[$i]}"
        done
    } >"$cfg"
    haproxy -db -f "$cfg" >"$OUT/$db-haproxy.log" 2>&1 &
    haproxy_pid=$!
    PIDS+=($!)
    # Its checks (rise 2 × 500 ms) find every instance up.
    sleep 2
}

cost_rounds() {
    local round setup
    for round in $(seq 1 "$ROUNDS"); do
        local order=(single cluster)
        [ $((round % 2)) = 0 ] && order=(cluster single)
        for setup in "${order[@]}"; do
            db="mapcast_cost_$$_${round}_$setup"
            psql -q "$PG" -c "CREATE DATABASE $db" >/dev/null
            PIDS=(); haproxy_pid=""; redis_pid=""
            if [ "$setup" = single ]; then
                redis_port=0
                start_instances single
                port=${mqtt_ports[0]}
            else
                start_redis
                start_instances $(seq -f 'node-%g' 1 "$CLUSTER_NODES")
                start_haproxy
            fi
            # Each instance reads the stream from where it started.
            sleep 1
            measure "$round-$setup-paced" 20
            measure "$round-$setup-max" 0
            cleanup
            PIDS=()
            psql -q "$PG" -c "DROP DATABASE $db" >/dev/null
        done
    done
    echo
    echo "medians over $ROUNDS rounds [min–max]; per message = per delivered message"
    jq -rs '
        def med: sort | .[length / 2 | floor];
        def fmt: if . >= 100 then floor | tostring elif . >= 1 then (. * 100 | round / 100 | tostring) else (. * 10000 | round / 10000 | tostring) end;
        def cell(k): map(.[k]) | "\(med | fmt) [\(min | fmt)–\(max | fmt)]";
        group_by(.name | sub("^[0-9]+-"; "")) | map({
            run: (.[0].name | sub("^[0-9]+-"; "")),
            delivered_per_s: cell("delivered_per_s"), p99_ms: cell("p99_ms"),
            lost: cell("lost"), duplicates: cell("duplicates"),
            cpu_us_per_msg: cell("cpu_us_per_msg"), haproxy_cpu_us_per_msg: cell("haproxy_cpu_us_per_msg"),
            redis_cpu_us_per_msg: cell("redis_cpu_us_per_msg"),
            redis_ops_per_msg: cell("redis_ops_per_msg"),
            pg_commits_per_msg: cell("pg_commits_per_msg"), pg_rows_per_msg: cell("pg_rows_per_msg"),
            load1: cell("load1")
        }) | .[] | to_entries | map("\(.key)=\(.value)") | join("  ")' "$OUT"/*-paced.json "$OUT"/*-max.json
    echo "reports in $OUT"
}

if [ "$COST" = 1 ]; then
    cost_rounds
    exit 0
fi

for round in $(seq 1 "$ROUNDS"); do
    db="mapcast_bench_$$_$round"
    psql -q "$PG" -c "CREATE DATABASE $db" >/dev/null
    db_url="${PG%/*}/$db"
    redis_port=$(free_port)
    redis-server --port "$redis_port" --bind 127.0.0.1 --save "" --appendonly no --dir "$OUT" >/dev/null &
    PIDS=($!)
    declare -A mqtt http pid
    for node in a b; do
        mqtt[$node]=$(free_port); http[$node]=$(free_port)
        mkdir -p "$OUT/$round-$node"
        MAPCAST_NODE_ID="node-$node" "$MAPCAST" serve \
            --mqtt-listen "127.0.0.1:${mqtt[$node]}" --http-listen "127.0.0.1:${http[$node]}" \
            --data-dir "$OUT/$round-$node" --database-url "$db_url" \
            --cluster-redis-url "redis://127.0.0.1:$redis_port" >"$OUT/$round-$node.log" 2>&1 &
        pid[$node]=$!
        PIDS+=($!)
    done
    for node in a b; do
        for _ in $(seq 1 100); do
            curl -sf "http://127.0.0.1:${http[$node]}/readyz" >/dev/null && break
            sleep 0.2
        done
    done
    "$MAPCAST_BENCH" pubsub -p 100 -s 1 -t 'devices/bench-{i}/location' -f 'devices/+/location' \
        -q 1 -r 0 --inflight 1 -d "$DURATION" --warmup "$WARMUP" \
        --port "${mqtt[a]}" --subscriber-port "${mqtt[b]}" --broker-pid "${pid[a]}" --json \
        | tail -n 1 >"$OUT/$round.json"
    jq -r '"round '"$round"': \(.delivered_per_s | floor) delivered msgs/s, published \(.published_per_s | floor)/s, lost \(.totals.lost), duplicates \(.totals.duplicates), p99 \(.latency.p99_us / 1000) ms"' "$OUT/$round.json"
    cleanup
    PIDS=()
    psql -q "$PG" -c "DROP DATABASE $db" >/dev/null
done
jq -s 'map(.delivered_per_s) | sort | "delivered msgs/s: median \(.[length/2|floor] | floor) [\(.[0] | floor)–\(.[-1] | floor)]"' -r "$OUT"/[0-9]*.json
echo "reports in $OUT"
