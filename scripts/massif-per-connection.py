#!/usr/bin/env python3
"""Heap bytes per idle connection, by owner, from two massif snapshots.

    massif-per-connection.py BASE.out HELD.out CONNECTIONS

BASE and HELD are detailed snapshots (`vgdb --pid=P detailed_snapshot F`) of
one broker under `valgrind --tool=massif --threshold=0.0 --depth=40`, taken
before the connections and while they are held. Every allocation site's
growth is put in one group by the first frame (from the allocation outward)
that a rule below recognises; frames of the standard library are skipped,
and generic arguments are ignored, so `Foo<mapcast::X>` counts as Foo's.
"""

import collections
import re
import sys

NODE = re.compile(r"^( *)n\d+: (\d+) (?:0x[0-9A-F]+: )?(.*)$")
STD = re.compile(r"\((library/|/rustc/)")
LOCATION = re.compile(r"^(.*?)( \([^()]*:\d+\))?$")
# mapcast's own files as massif names them (without their directory).
MAPCAST_FILE = re.compile(
    r"\((acks|admission|connect_check|convert|framing|intake|pump|qos2|reason|server|"
    r"session|trim|unexpected|v3|v5)\.rs:\d+\)"
)


def leaves(path):
    """(stack from the allocation outward, bytes allocated there and not below)."""
    out, stack = [], []  # stack: [depth, bytes, frame, bytes of the children]

    def pop_to(depth):
        while stack and stack[-1][0] >= depth:
            _, size, frame, below = stack.pop()
            # The root (all heap) is not a frame.
            if size > below and stack:
                out.append((tuple(s[2] for s in stack[1:]) + (frame,), size - below))

    started = False
    with open(path, errors="replace") as fh:
        for line in fh:
            if line.startswith("heap_tree="):
                started = True
                continue
            if not started:
                continue
            m = NODE.match(line)
            if not m:
                break
            depth, size, frame = len(m.group(1)), int(m.group(2)), m.group(3)
            pop_to(depth)
            if stack:
                stack[-1][3] += size
            stack.append([depth, size, frame, 0])
    pop_to(0)
    return out


def name(frame):
    """The function and its location, without generic arguments."""
    m = LOCATION.match(frame)
    text, loc = m.group(1), m.group(2) or ""
    while True:
        shorter = re.sub(r"<[^<>]*>", "", text)
        if shorter == text:
            break
        text = shorter
    return text.split("<")[0] + loc


def group(stack):
    frames = [name(f) for f in stack if not STD.search(f)]
    for i, f in enumerate(frames):
        outward = "\n".join(frames[i:])
        if "boxed.rs:98" in f and "ntex_server" in outward:
            return "ntex worker: the connection's boxed service future (handshake, then the ntex-mqtt dispatcher)"
        if "poll_ready" in f and "pipeline.rs:302" in f:
            caller = "\n".join(frames[i + 1 : i + 3])
            if "io.rs:456" in caller:
                return "ntex-service: boxed poll_ready future of the MQTT dispatcher pipeline (publish chain with mapcast's middlewares, control)"
            if "buffer.rs:200" in caller:
                return "ntex-service: boxed poll_ready future of the control BufferService"
            if "io.rs:256" in caller:
                return "ntex-service: boxed poll_ready future of the control service"
            return "ntex-service: other boxed poll_ready futures"
        if "OwnedTasks::bind" in f or "runtime/task/core.rs:261" in f:
            if "(pump.rs" in outward:
                return "tokio task: the pump (mapcast)"
            if "(wrk.rs" in outward.split("ntex_io")[0]:
                return "tokio task: the ntex worker's connection task"
            if "ntex_io" in outward or "ntex_net" in outward:
                return "tokio tasks: ntex I/O (read and write)"
            return "tokio tasks: other"
        if "RegistrationSet::allocate" in f:
            return "tokio: socket registration"
        if any(k in f for k in ("(ecs.rs", "sharded_slab", "tracing_subscriber", "tracing::span", "tracing_core")):
            return "mapcast: the connection's tracing span (ECS fields, registry slot, extensions)"
        if "mapcast::broker" in f or "(router.rs" in f:
            return "mapcast: router (session map slot and its growth, Session, Outbox)"
        if "(pump.rs" in f:
            return "mapcast: pump state (in-flight table, wake-up conditions)"
        if "mapcast::" in f or MAPCAST_FILE.search(f):
            return "mapcast: connection state and middlewares (mqtt::session, acks)"
        if any(k in f for k in ("ntex_bytes", "ntex_io::buf", "(buf.rs", "(pages.rs")):
            return "ntex-io / ntex-bytes: buffer stack and write page queues"
        if "ntex_io" in f:
            return "ntex-io: Io state"
        if "ntex_mqtt" in f:
            return "ntex-mqtt: dispatcher, MqttShared, in-flight counter"
        if any(k in f for k in ("ntex_service", "ntex_util", "(ctx.rs", "(counter.rs", "(condition.rs", "(cell.rs")):
            return "ntex-service / ntex-util: Rc pipelines, waiter lists, counters, conditions, buffer queue"
        if any(k in f for k in ("ntex_server", "ntex_net", "ntex_rt")):
            return "ntex-server / ntex-net: worker's per-connection future, socket start"
    return "other (SQLite page cache and statements, not per connection)"


def main():
    base, held, conns = sys.argv[1], sys.argv[2], int(sys.argv[3])
    growth = collections.Counter()
    for stack, size in leaves(held):
        growth[group(stack)] += size
    for stack, size in leaves(base):
        growth[group(stack)] -= size
    total = sum(growth.values())
    print("| what | bytes per connection |")
    print("|---|---|")
    for what, size in sorted(growth.items(), key=lambda kv: -kv[1]):
        print(f"| {what} | {size / conns:,.0f} |")
    print(f"| **heap growth per connection** | **{total / conns:,.0f}** |")


if __name__ == "__main__":
    main()
