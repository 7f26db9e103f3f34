#!/usr/bin/env bash
# mapcast side by side with Mosquitto, on this machine, in one run.
#
# Runs the same `mapcast-bench` scenarios against Mosquitto (default config,
# and with "variant B": max_inflight_messages 1000 + set_tcp_nodelay true) and
# against `mapcast serve`, alternating brokers, ROUNDS times, each broker
# freshly started for each run. Prints a table of medians, spread (min–max)
# and the ratio mapcast / Mosquitto. Raw JSON reports stay in --out.
#
#   scripts/bench-vs-mosquitto.sh                  # 3 rounds, 10 s per run
#   scripts/bench-vs-mosquitto.sh --rounds 5 --duration 30
#   scripts/bench-vs-mosquitto.sh --rounds 1 --duration 3 --only qos0-fanin,conns
#
# Needs: target/release/mapcast and target/release/mapcast-bench (cargo build
# --release builds both), mosquitto (installed
# with apt-get when missing and running as root), python3.
set -euo pipefail

ROUNDS=3
DURATION=10
WARMUP=2
CONNECTIONS=10000
CONNECT_RATE=2000
HOLD=5
FLEET=100000
SCENARIOS="qos0-fanin,qos1-fanin,paced-10k,fanout,conns"
VARIANTS="A,B"
OUT=""
MAPCAST="${MAPCAST:-target/release/mapcast}"
# The load generator; by default the one built next to the broker.
MAPCAST_BENCH="${MAPCAST_BENCH:-$(dirname "$MAPCAST")/mapcast-bench}"

usage() {
    cat <<EOF
usage: $0 [options]
  --rounds N         runs per scenario and broker (default $ROUNDS); medians over them
  --duration S       measured seconds per pubsub run (default $DURATION)
  --warmup S         unmeasured seconds before each pubsub run (default $WARMUP)
  --connections C    idle connections in the conns scenario (default $CONNECTIONS)
  --connect-rate R   new connections per second in conns (default $CONNECT_RATE)
  --hold S           seconds the idle connections are held (default $HOLD)
  --fleet N          devices in the fleet scenario (default $FLEET): they connect at
                     --connect-rate, then publish 10,000 QoS1 positions/s in total
  --only LIST        comma-separated scenarios (default $SCENARIOS;
                     also qos1-flood: QoS1 fan-in with 100 publishes in flight per publisher,
                     and fleet: --fleet devices online, then 10,000 positions/s)
  --variants LIST    Mosquitto configs: A (defaults), B (tuned) (default $VARIANTS)
  --out DIR          keep JSON reports and broker logs here (default: a temp dir)
env: MAPCAST=path/to/mapcast (default target/release/mapcast)
     MAPCAST_BENCH=path/to/mapcast-bench (default: next to MAPCAST)
EOF
}

while [ $# -gt 0 ]; do
    case "$1" in
        --rounds) ROUNDS="$2"; shift 2 ;;
        --duration) DURATION="$2"; shift 2 ;;
        --warmup) WARMUP="$2"; shift 2 ;;
        --connections) CONNECTIONS="$2"; shift 2 ;;
        --connect-rate) CONNECT_RATE="$2"; shift 2 ;;
        --hold) HOLD="$2"; shift 2 ;;
        --fleet) FLEET="$2"; shift 2 ;;
        --only) SCENARIOS="$2"; shift 2 ;;
        --variants) VARIANTS="$2"; shift 2 ;;
        --out) OUT="$2"; shift 2 ;;
        -h|--help) usage; exit 0 ;;
        *) echo "unknown option: $1" >&2; usage >&2; exit 2 ;;
    esac
done

cd "$(dirname "$0")/.."

if ! command -v mosquitto >/dev/null 2>&1 && [ -x /usr/sbin/mosquitto ]; then
    PATH="$PATH:/usr/sbin"
fi
if ! command -v mosquitto >/dev/null 2>&1; then
    if [ "$(id -u)" = 0 ]; then
        echo "mosquitto not found: installing it with apt-get" >&2
        apt-get install -y mosquitto >/dev/null || { apt-get update >/dev/null && apt-get install -y mosquitto >/dev/null; }
    else
        echo "mosquitto not found: apt-get install mosquitto (as root), then run again" >&2
        exit 1
    fi
fi
if [ ! -x "$MAPCAST" ]; then
    echo "$MAPCAST not found: cargo build --release (or set MAPCAST=path)" >&2
    exit 1
fi
if [ ! -x "$MAPCAST_BENCH" ]; then
    echo "$MAPCAST_BENCH not found: cargo build --release (or set MAPCAST_BENCH=path)" >&2
    exit 1
fi
command -v python3 >/dev/null || { echo "python3 is needed for the summary" >&2; exit 1; }

# Thousands of connections need thousands of descriptors, in the brokers and the generator.
ulimit -n $((FLEET + 10000)) 2>/dev/null || ulimit -n 65536 2>/dev/null || ulimit -n "$(ulimit -Hn)"
if [[ ",$SCENARIOS," == *,fleet,* ]] && [ "$(ulimit -n)" -le "$FLEET" ]; then
    echo "the open-files limit ($(ulimit -n)) is below --fleet $FLEET: raise it (ulimit -Hn, LimitNOFILE) or pass a smaller --fleet" >&2
    exit 1
fi

OUT="${OUT:-$(mktemp -d -t mapcast-vs-mosquitto.XXXXXX)}"
mkdir -p "$OUT"
BROKER_PID=""
BROKER_DIR=""

free_port() {
    python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

wait_port() {
    local port=$1 pid=$2
    for _ in $(seq 1 100); do
        if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then return 0; fi
        kill -0 "$pid" 2>/dev/null || { echo "broker exited on start" >&2; return 1; }
        sleep 0.1
    done
    echo "broker did not listen on $port" >&2
    return 1
}

stop_broker() {
    if [ -n "$BROKER_PID" ]; then
        kill "$BROKER_PID" 2>/dev/null || true
        wait "$BROKER_PID" 2>/dev/null || true
        BROKER_PID=""
    fi
    if [ -n "$BROKER_DIR" ]; then
        rm -rf "$BROKER_DIR"
        BROKER_DIR=""
    fi
}
trap stop_broker EXIT
trap 'stop_broker; exit 130' INT TERM

# start_broker NAME LOG: starts it on a free port; sets PORT and BROKER_PID.
start_broker() {
    local name=$1 log=$2
    PORT=$(free_port)
    BROKER_DIR=$(mktemp -d -t mapcast-bench-broker.XXXXXX)
    case "$name" in
        mosquitto-A|mosquitto-B)
            {
                [ "$(id -u)" = 0 ] && echo "user root"
                echo "listener $PORT 127.0.0.1"
                echo "allow_anonymous true"
                if [ "$name" = mosquitto-B ]; then
                    echo "max_inflight_messages 1000"
                    echo "set_tcp_nodelay true"
                fi
            } >"$BROKER_DIR/mosquitto.conf"
            mosquitto -c "$BROKER_DIR/mosquitto.conf" >"$log" 2>&1 &
            ;;
        mapcast)
            # One generator opens every connection from one address: lift the
            # per-address connect rate (a defence against storms, not a capacity).
            printf '[broker]\nmax_connect_rate_per_ip = 0\nmax_connections = 0\n' >"$BROKER_DIR/bench.toml"
            "$MAPCAST" serve --config "$BROKER_DIR/bench.toml" --mqtt-listen "127.0.0.1:$PORT" \
                --http-listen "127.0.0.1:$(free_port)" --data-dir "$BROKER_DIR" >"$log" 2>&1 &
            ;;
    esac
    BROKER_PID=$!
    wait_port "$PORT" "$BROKER_PID"
}

# The generator's arguments for each scenario (the broker's host/port/pid are added).
scenario_args() {
    case "$1" in
        qos0-fanin) echo "pubsub -p 100 -s 1 -t cars/{i}/location -f cars/+/location -q 0 -r 0 -d $DURATION --warmup $WARMUP" ;;
        # QoS 1 runs publish device locations: mapcast validates and stores each
        # in the location history (group commit, PUBACK after commit).
        qos1-fanin) echo "pubsub -p 100 -s 1 -t devices/bench-{i}/location -f devices/+/location -q 1 -r 0 --inflight 1 -d $DURATION --warmup $WARMUP" ;;
        qos1-flood) echo "pubsub -p 100 -s 1 -t devices/bench-{i}/location -f devices/+/location -q 1 -r 0 --inflight 100 -d $DURATION --warmup $WARMUP" ;;
        paced-10k)  echo "pubsub -p 100 -s 1 -t devices/bench-{i}/location -f devices/+/location -q 1 -r 100 -d $DURATION --warmup $WARMUP" ;;
        fanout)     echo "pubsub -p 1 -s 100 -t cars/0/location -f cars/0/location -q 0 -r 0 -d $DURATION --warmup $WARMUP" ;;
        conns)      echo "conns -c $CONNECTIONS --connect-rate $CONNECT_RATE --hold $HOLD" ;;
        # Every device publishes its share of 10,000 positions/s; eight source
        # addresses give the generator ephemeral ports for 100,000 connections.
        fleet)      echo "pubsub -p $FLEET -s 1 -t devices/bench-{i}/location -f devices/+/location -q 1 -r $(python3 -c "print(10000 / $FLEET)") --inflight 1 --connect-rate $CONNECT_RATE --source-addresses 8 -d $DURATION --warmup $WARMUP" ;;
        *) echo "unknown scenario: $1" >&2; return 1 ;;
    esac
}

BROKERS=()
for v in ${VARIANTS//,/ }; do
    case "$v" in
        A|B) ;;
        *) echo "unknown Mosquitto variant: $v (A or B)" >&2; exit 2 ;;
    esac
done
IFS=, read -r -a SCENARIO_LIST <<<"$SCENARIOS"
for s in "${SCENARIO_LIST[@]}"; do scenario_args "$s" >/dev/null; done

echo "mapcast vs Mosquitto $(mosquitto -h 2>/dev/null | head -1 | awk '{print $3}'): $ROUNDS rounds, reports in $OUT" >&2
echo "# commands ($(date -u +%Y-%m-%dT%H:%M:%SZ))" >"$OUT/commands.txt"
for round in $(seq 1 "$ROUNDS"); do
    # Alternate the order so drift (heat, caches, noisy neighbours) spreads evenly.
    BROKERS=()
    for v in ${VARIANTS//,/ }; do BROKERS+=("mosquitto-$v"); done
    if [ $((round % 2)) = 1 ]; then BROKERS=(mapcast "${BROKERS[@]}"); else BROKERS+=(mapcast); fi
    for scenario in "${SCENARIO_LIST[@]}"; do
        for broker in "${BROKERS[@]}"; do
            tag="$scenario.$broker.$round"
            start_broker "$broker" "$OUT/$tag.broker.log"
            # Idle connections are measured as RSS growth over a settled
            # broker: what a broker still allocates in its first second (the
            # store opening, worker threads' first arenas) is not theirs.
            if [ "$scenario" = conns ]; then sleep 1; fi
            # shellcheck disable=SC2046 # word splitting of the scenario's arguments is intended
            cmd=("$MAPCAST_BENCH" $(scenario_args "$scenario") --port "$PORT" --broker-pid "$BROKER_PID" --json)
            echo "${cmd[*]}" >>"$OUT/commands.txt"
            # Other work on the machine skews results: keep the load next to them.
            echo "$tag $(cut -d' ' -f1-3 /proc/loadavg)" >>"$OUT/loadavg.txt"
            echo "== round $round/$ROUNDS  $scenario  $broker" >&2
            if "${cmd[@]}" >"$OUT/$tag.out" 2>"$OUT/$tag.progress"; then
                tail -n 1 "$OUT/$tag.out" >"$OUT/$tag.json"
                sed '$d' "$OUT/$tag.out" | sed 's/^/   /' >&2
            else
                echo "   failed: see $OUT/$tag.progress" >&2
                tail -n 3 "$OUT/$tag.progress" >&2 || true
            fi
            stop_broker
        done
    done
done

python3 - "$OUT" "$ROUNDS" <<'PY'
import glob, json, os, statistics, sys

out, rounds = sys.argv[1], int(sys.argv[2])
# scenario -> [(label, extractor, unit, higher_is_better)]
METRICS = {
    "qos0-fanin": [
        ("delivered msgs/s", lambda r: r["delivered_per_s"], "", True),
        ("msgs per broker CPU-s", lambda r: r["broker_process"]["delivered_per_cpu_s"], "", True),
        ("broker CPU %", lambda r: r["broker_process"]["cpu_pct"], "", False),
        ("p99 latency ms", lambda r: r["latency"]["p99_us"] / 1000, "", False),
    ],
    "qos1-fanin": [
        ("delivered msgs/s", lambda r: r["delivered_per_s"], "", True),
        ("msgs per broker CPU-s", lambda r: r["broker_process"]["delivered_per_cpu_s"], "", True),
        ("loss %", lambda r: r["totals"]["loss_pct"], "", False),
        ("broker RSS end MiB", lambda r: (r["broker_process"]["rss_kib_end"] or 0) / 1024, "", False),
    ],
    "qos1-flood": [
        ("delivered msgs/s", lambda r: r["delivered_per_s"], "", True),
        ("acked msgs/s", lambda r: r["published_per_s"], "", True),
        ("loss %", lambda r: r["totals"]["loss_pct"], "", False),
        ("broker RSS end MiB", lambda r: (r["broker_process"]["rss_kib_end"] or 0) / 1024, "", False),
    ],
    "paced-10k": [
        ("delivered msgs/s", lambda r: r["delivered_per_s"], "", True),
        ("p50 latency ms", lambda r: r["latency"]["p50_us"] / 1000, "", False),
        ("p99 latency ms", lambda r: r["latency"]["p99_us"] / 1000, "", False),
        ("p99.9 latency ms", lambda r: r["latency"]["p999_us"] / 1000, "", False),
        ("broker CPU %", lambda r: r["broker_process"]["cpu_pct"], "", False),
    ],
    "fanout": [
        ("deliveries/s", lambda r: r["delivered_per_s"], "", True),
        ("msgs per broker CPU-s", lambda r: r["broker_process"]["delivered_per_cpu_s"], "", True),
        ("loss %", lambda r: r["totals"]["loss_pct"], "", False),
    ],
    "conns": [
        ("RSS KiB/connection", lambda r: r["rss_kib_per_connection"], "", False),
        ("connected", lambda r: r["connected"], "", True),
        ("connect p99 ms", lambda r: r["connect_latency"]["p99_us"] / 1000, "", False),
    ],
    "fleet": [
        ("delivered msgs/s", lambda r: r["delivered_per_s"], "", True),
        ("loss %", lambda r: r["totals"]["loss_pct"], "", False),
        ("connect p99 ms", lambda r: r["connect_latency"]["p99_us"] / 1000, "", False),
        ("p99 latency ms", lambda r: r["latency"]["p99_us"] / 1000, "", False),
        ("broker CPU %", lambda r: r["broker_process"]["cpu_pct"], "", False),
        ("broker RSS end MiB", lambda r: (r["broker_process"]["rss_kib_end"] or 0) / 1024, "", False),
    ],
}
TITLES = {
    "qos0-fanin": "QoS0 fan-in, 100 pub → 1 sub, max rate",
    "qos1-fanin": "QoS1 fan-in, 100 pub → 1 sub, max rate, 1 in flight each",
    "qos1-flood": "QoS1 fan-in, 100 pub → 1 sub, max rate, 100 in flight each",
    "paced-10k": "paced 10K msgs/s (100 × 100/s), QoS1",
    "fanout": "fan-out 1 pub → 100 subs, QoS0, max rate",
    "conns": "idle connections",
    "fleet": "a fleet online, then 10K positions/s in total, QoS1",
}

def load(scenario, broker):
    runs = []
    for path in sorted(glob.glob(os.path.join(out, f"{scenario}.{broker}.*.json"))):
        try:
            with open(path) as f:
                runs.append(json.loads(f.read()))
        except (OSError, ValueError):
            pass
    return runs

def fmt(x):
    if x is None:
        return "–"
    if abs(x) >= 1000:
        return f"{x:,.0f}"
    if abs(x) >= 10:
        return f"{x:.1f}"
    return f"{x:.2f}"

def summary(values):
    if not values:
        return None, "n/a"
    med = statistics.median(values)
    return med, f"{fmt(med)} [{fmt(min(values))}–{fmt(max(values))}]"

brokers = ["mapcast"] + sorted({os.path.basename(p).split(".")[1] for p in glob.glob(os.path.join(out, "*.json"))} - {"mapcast"})
header = ["scenario", "metric"] + [f"{b} median [min–max]" for b in brokers] + [f"mapcast/{b}" for b in brokers[1:]]
print("| " + " | ".join(header) + " |")
print("|" + "---|" * len(header))
for scenario, metrics in METRICS.items():
    runs = {b: load(scenario, b) for b in brokers}
    if not any(runs.values()):
        continue
    for label, get, _, _ in metrics:
        meds, cells = {}, []
        for b in brokers:
            values = []
            for r in runs[b]:
                try:
                    v = get(r)
                except (KeyError, TypeError):
                    v = None
                if v is not None:
                    values.append(float(v))
            meds[b], cell = summary(values)
            cells.append(cell)
        ratios = []
        for b in brokers[1:]:
            m, o = meds.get("mapcast"), meds.get(b)
            ratios.append(f"{m / o:.2f}×" if m is not None and o else "–")
        name = f"{TITLES[scenario]} (n={len(runs['mapcast'])})"
        print("| " + " | ".join([name, label] + cells + ratios) + " |")
PY
echo "reports and broker logs: $OUT" >&2
