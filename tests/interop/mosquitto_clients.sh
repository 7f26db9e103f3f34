#!/usr/bin/env bash
# Interop: Mosquitto's command-line clients (mosquitto_pub / mosquitto_sub,
# MQTT 3.1.1 and 5) against the mapcast binary.
#
#   MAPCAST_BIN=target/debug/mapcast bash tests/interop/mosquitto_clients.sh
#
# Starts its own server on port 0 with a temp data dir, learns the port from
# the startup log line, and prints one "ok"/"FAIL" line per check, then
# "N passed, M failed". Exit status 0 only if every check passed.
set -uo pipefail

BIN=${MAPCAST_BIN:-target/debug/mapcast}
command -v stdbuf >/dev/null || { echo "error: stdbuf (coreutils) not found"; exit 2; }
command -v mosquitto_pub >/dev/null || { echo "skipped: mosquitto_pub not on PATH (apt-get install mosquitto-clients)"; exit 77; }
[ -x "$BIN" ] || { echo "error: MAPCAST_BIN=$BIN is not an executable"; exit 2; }

work=$(mktemp -d)
server=
cleanup() {
    [ -n "$server" ] && kill -9 "$server" 2>/dev/null
    jobs -p | xargs -r kill -9 2>/dev/null
    wait 2>/dev/null
    rm -rf "$work"
}
trap cleanup EXIT

MAPCAST_SYS_INTERVAL_SECS=1 "$BIN" serve --mqtt-listen 127.0.0.1:0 --http-listen 127.0.0.1:0 --data-dir "$work/data" >"$work/server.log" 2>&1 &
server=$!
disown "$server" # no job-control chatter when cleanup kills it
port=
for _ in $(seq 300); do
    port=$(grep -o '"mqtt\.address":"[^"]*"' "$work/server.log" | head -n1 | sed -E 's/.*:([0-9]+)"$/\1/')
    [ -n "$port" ] && break
    kill -0 "$server" 2>/dev/null || break
    sleep 0.1
done
if [ -z "$port" ]; then
    echo "FAIL: the server did not log its MQTT address"; cat "$work/server.log"; exit 1
fi
echo "# mapcast MQTT on 127.0.0.1:$port"

passed=0
failed=0
ok() { passed=$((passed + 1)); echo "ok - $1"; }
fail() { failed=$((failed + 1)); echo "FAIL - $1"; [ -n "${2:-}" ] && sed 's/^/#   /' "$2"; }

# Wait until $2 contains $1 (a debug line like "received SUBACK").
wait_for() {
    for _ in $(seq 100); do
        grep -q -- "$1" "$2" 2>/dev/null && return 0
        sleep 0.05
    done
    return 1
}

# Line-buffered, so a background subscriber's debug lines ("received SUBACK")
# reach its log file while it runs.
sub=(stdbuf -oL mosquitto_sub -h 127.0.0.1 -p "$port")
pub=(mosquitto_pub -h 127.0.0.1 -p "$port")

# 1. Publish/subscribe round trip at every QoS, both protocol versions.
for v in mqttv311 mqttv5; do
    for q in 0 1 2; do
        name="$v QoS $q round trip"
        topic="interop/$v/q$q"
        msg="hello-$v-q$q"
        out="$work/rt-$v-$q"
        "${sub[@]}" -d -V "$v" -q "$q" -t "$topic" -C 1 -W 5 >"$out" 2>&1 &
        s=$!
        if ! wait_for "received SUBACK" "$out"; then fail "$name: no SUBACK" "$out"; kill "$s" 2>/dev/null; continue; fi
        if ! "${pub[@]}" -V "$v" -q "$q" -t "$topic" -m "$msg" >"$work/pub.log" 2>&1; then
            fail "$name: mosquitto_pub failed" "$work/pub.log"; continue
        fi
        wait "$s"
        if grep -qx -- "$msg" "$out" && grep -q "received PUBLISH (d0, q$q, r0" "$out"; then ok "$name"; else fail "$name" "$out"; fi
    done
done

# 2. Retained: set, delivered with the retain flag, replaced, cleared.
for v in mqttv311 mqttv5; do
    topic="interop/$v/retained"
    "${pub[@]}" -V "$v" -q 1 -r -t "$topic" -m first
    "${pub[@]}" -V "$v" -q 1 -r -t "$topic" -m second
    out="$work/ret-$v"
    "${sub[@]}" -d -V "$v" -q 1 -t "$topic" -C 1 -W 5 >"$out" 2>&1
    if grep -qx second "$out" && ! grep -qx first "$out" && grep -q "received PUBLISH (d0, q1, r1" "$out"; then
        ok "$v retained message replaced and delivered with retain flag"
    else
        fail "$v retained" "$out"
    fi
    "${pub[@]}" -V "$v" -q 1 -r -n -t "$topic"
    out="$work/ret-clear-$v"
    "${sub[@]}" -V "$v" -q 1 -t "$topic" -C 1 -W 1 >"$out" 2>&1
    if [ ! -s "$out" ] || ! grep -q second "$out"; then ok "$v retained message cleared by an empty payload"; else fail "$v retained clear" "$out"; fi
done

# 3. Will: sent when a client dies, not when it disconnects cleanly.
for v in mqttv311 mqttv5; do
    topic="interop/$v/will"
    out="$work/will-$v"
    "${sub[@]}" -d -V "$v" -q 1 -t "$topic" -C 1 -W 5 >"$out" 2>&1 &
    watcher=$!
    wait_for "received SUBACK" "$out"
    dying_log="$work/dying-$v"
    "${sub[@]}" -d -V "$v" -i "dying-$v" -t "interop/$v/unused" --will-topic "$topic" --will-payload "gone-$v" --will-qos 1 >"$dying_log" 2>&1 &
    dying=$!
    wait_for "received CONNACK" "$dying_log"
    kill -9 "$dying"
    wait "$dying" 2>/dev/null
    wait "$watcher"
    if grep -qx "gone-$v" "$out"; then ok "$v will published when the client dies"; else fail "$v will" "$out"; fi

    out="$work/nowill-$v"
    "${sub[@]}" -V "$v" -q 1 -t "$topic-clean" -C 1 -W 2 >"$out" 2>&1 &
    watcher=$!
    sleep 0.3
    "${pub[@]}" -V "$v" -i "clean-$v" -t "interop/$v/other" -m x --will-topic "$topic-clean" --will-payload "should-not-appear"
    wait "$watcher"
    if ! grep -q should-not-appear "$out"; then ok "$v will not published after a clean disconnect"; else fail "$v will on clean disconnect" "$out"; fi
done

# 4. Persistent session: QoS 1 queued while the subscriber is away.
for v in mqttv311 mqttv5; do
    id="persist-$v"
    topic="interop/$v/queue"
    extra=()
    [ "$v" = mqttv5 ] && extra=(-x 300)
    "${sub[@]}" -V "$v" -c -i "$id" "${extra[@]}" -q 1 -t "$topic" -E
    "${pub[@]}" -V "$v" -q 1 -t "$topic" -m queued-1
    "${pub[@]}" -V "$v" -q 1 -t "$topic" -m queued-2
    out="$work/persist-$v"
    "${sub[@]}" -V "$v" -c -i "$id" "${extra[@]}" -q 1 -t "$topic" -C 2 -W 5 >"$out" 2>&1
    if [ "$(cat "$out")" = "$(printf 'queued-1\nqueued-2')" ]; then ok "$v offline QoS 1 queue delivered on reconnect"; else fail "$v persistent session" "$out"; fi
done

# 5. MQTT 5 properties: user properties and content type pass through.
out="$work/props"
"${sub[@]}" -d -V mqttv5 -q 1 -t interop/props -C 1 -W 5 -F '%P|%C|%p' >"$out" 2>&1 &
s=$!
wait_for "received SUBACK" "$out"
"${pub[@]}" -V mqttv5 -q 1 -t interop/props -m '{"lat":1}' -D PUBLISH user-property device car-1 -D PUBLISH content-type application/json
wait "$s"
if grep -q 'device:car-1|application/json|{"lat":1}' "$out"; then ok "mqttv5 user property and content type passed through"; else fail "mqttv5 properties" "$out"; fi

# 6. Wildcards and $SYS.
out="$work/wild"
"${sub[@]}" -d -V mqttv311 -t 'interop/+/wild/#' -C 2 -W 5 -v >"$out" 2>&1 &
s=$!
wait_for "received SUBACK" "$out"
"${pub[@]}" -t interop/a/wild -m one
"${pub[@]}" -t interop/a/other -m no
"${pub[@]}" -t interop/b/wild/x/y -m two
wait "$s"
if grep -qx "interop/a/wild one" "$out" && grep -qx "interop/b/wild/x/y two" "$out" && ! grep -q " no$" "$out"; then
    ok "wildcards + and # match as specified"
else
    fail "wildcards" "$out"
fi
out="$work/sys"
"${sub[@]}" -t '$SYS/broker/version' -C 1 -W 5 >"$out" 2>&1
if grep -q mapcast "$out"; then ok "\$SYS/broker/version is published"; else fail "\$SYS version" "$out"; fi

echo "$passed passed, $failed failed"
[ "$failed" -eq 0 ]
