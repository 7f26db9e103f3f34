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
# Needs: target/release/mapcast and target/release/mapcast-bench,
# redis-server, psql, curl, jq, and MAPCAST_BENCH_POSTGRES_URL: a PostgreSQL
# URL whose user may create databases (a fresh one per run is made from it).
set -euo pipefail

ROUNDS=3
DURATION=5
WARMUP=2
MAPCAST="${MAPCAST:-target/release/mapcast}"
MAPCAST_BENCH="${MAPCAST_BENCH:-target/release/mapcast-bench}"
PG="${MAPCAST_BENCH_POSTGRES_URL:?set MAPCAST_BENCH_POSTGRES_URL}"

while [ $# -gt 0 ]; do
    case "$1" in
        --rounds) ROUNDS="$2"; shift 2 ;;
        --duration) DURATION="$2"; shift 2 ;;
        *) echo "usage: $0 [--rounds N] [--duration S]" >&2; exit 2 ;;
    esac
done

OUT=$(mktemp -d)
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
PIDS=()
cleanup() { for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; }
trap cleanup EXIT

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
