#!/usr/bin/env python3
"""Interop: the Eclipse Paho Python client (paho-mqtt 2.x) against mapcast.

    MAPCAST_BIN=target/debug/mapcast python3 tests/interop/paho_interop.py

Starts its own server on port 0 with a temp data dir, learns the port from the
startup log line, runs each check over MQTT 3.1.1 and 5, prints one "ok"/"FAIL"
line per check and then "N passed, M failed". Exit status 0 only if all passed;
77 when paho-mqtt is not installed.
"""

import json
import os
import queue
import socket
import subprocess
import sys
import tempfile
import threading
import time
import traceback

try:
    import paho.mqtt.client as mqtt
    from paho.mqtt.packettypes import PacketTypes
    from paho.mqtt.properties import Properties
except ImportError:
    print("skipped: paho-mqtt is not installed for " + sys.executable + " (pip install paho-mqtt)")
    sys.exit(77)

TIMEOUT = 5.0
PROTOCOLS = [("v3.1.1", mqtt.MQTTv311), ("v5", mqtt.MQTTv5)]


def start_server(binary, data_dir):
    env = dict(os.environ, MAPCAST_SYS_INTERVAL_SECS="1")
    proc = subprocess.Popen(
        [binary, "serve", "--mqtt-listen", "127.0.0.1:0", "--http-listen", "127.0.0.1:0", "--data-dir", data_dir],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
        text=True,
        env=env,
    )
    log = []
    found = queue.Queue()

    def drain():
        for line in proc.stdout:
            log.append(line.rstrip("\n"))
            try:
                obj = json.loads(line)
            except ValueError:
                continue
            addr = obj.get("mqtt.address") or (obj.get("mqtt") or {}).get("address")
            if addr:
                found.put(addr)

    threading.Thread(target=drain, daemon=True).start()
    try:
        addr = found.get(timeout=30)
    except queue.Empty:
        proc.kill()
        raise SystemExit("the server did not log its MQTT address:\n" + "\n".join(log))
    host, port = addr.rsplit(":", 1)
    return proc, int(port)


class Client:
    """A connected paho client whose received messages land in a queue."""

    def __init__(self, port, client_id, protocol, clean=True, will=None, session_expiry=None):
        self.v5 = protocol == mqtt.MQTTv5
        self.messages = queue.Queue()
        self.acks = {}
        self.connected = threading.Event()
        self.connack = None
        kwargs = {} if self.v5 else {"clean_session": clean}
        self.c = mqtt.Client(
            mqtt.CallbackAPIVersion.VERSION2,
            client_id=client_id,
            protocol=protocol,
            reconnect_on_failure=False,
            **kwargs,
        )
        self.c.on_connect = self._on_connect
        self.c.on_message = lambda c, u, msg: self.messages.put(msg)
        self.c.on_subscribe = self._on_subscribe
        if will:
            topic, payload, qos, retain = will
            self.c.will_set(topic, payload, qos, retain)
        if self.v5:
            props = None
            if session_expiry is not None:
                props = Properties(PacketTypes.CONNECT)
                props.SessionExpiryInterval = session_expiry
            self.c.connect("127.0.0.1", port, keepalive=30, clean_start=clean, properties=props)
        else:
            self.c.connect("127.0.0.1", port, keepalive=30)
        self.c.loop_start()
        if not self.connected.wait(TIMEOUT):
            raise AssertionError(client_id + ": no CONNACK")
        if self.connack[1].is_failure:
            raise AssertionError(client_id + ": refused " + str(self.connack[1]))

    def _on_connect(self, client, userdata, flags, reason_code, properties):
        self.connack = (flags, reason_code)
        self.connected.set()

    def _on_subscribe(self, client, userdata, mid, reason_codes, properties):
        self.acks[mid] = reason_codes

    @property
    def session_present(self):
        return bool(self.connack[0].session_present)

    def subscribe(self, topic, qos):
        result, mid = self.c.subscribe(topic, qos)
        assert result == mqtt.MQTT_ERR_SUCCESS, result
        deadline = time.time() + TIMEOUT
        while mid not in self.acks:
            assert time.time() < deadline, "no SUBACK for " + topic
            time.sleep(0.01)
        codes = self.acks[mid]
        assert all(not rc.is_failure for rc in codes), "SUBSCRIBE refused: " + str(codes)

    def publish(self, topic, payload, qos, retain=False, properties=None):
        info = self.c.publish(topic, payload, qos, retain, properties)
        info.wait_for_publish(TIMEOUT)
        assert info.is_published(), "publish to " + topic + " not acknowledged"

    def recv(self, timeout=TIMEOUT):
        try:
            return self.messages.get(timeout=timeout)
        except queue.Empty:
            raise AssertionError("no message within %.1fs" % timeout) from None

    def expect_nothing(self, timeout=0.5):
        try:
            msg = self.messages.get(timeout=timeout)
        except queue.Empty:
            return
        raise AssertionError("unexpected message on %s: %r" % (msg.topic, msg.payload))

    def disconnect(self):
        self.c.disconnect()
        self.c.loop_stop()

    def kill(self):
        """Drop the TCP connection without DISCONNECT."""
        sock = self.c.socket()
        sock.shutdown(socket.SHUT_RDWR)
        sock.close()
        self.c.loop_stop()


def check_qos_roundtrip(port, name, proto):
    sub = Client(port, "sub-" + name, proto)
    pub = Client(port, "pub-" + name, proto)
    for qos in (0, 1, 2):
        topic = "paho/%s/q%d" % (name, qos)
        sub.subscribe(topic, qos)
        pub.publish(topic, b"hello q%d" % qos, qos)
        msg = sub.recv()
        assert msg.topic == topic, msg.topic
        assert msg.payload == b"hello q%d" % qos, msg.payload
        assert msg.qos == qos, "delivered at QoS %d, expected %d" % (msg.qos, qos)
    sub.disconnect()
    pub.disconnect()


def check_retained(port, name, proto):
    pub = Client(port, "rpub-" + name, proto)
    topic = "paho/%s/retained" % name
    pub.publish(topic, b"old", 1, retain=True)
    pub.publish(topic, b"new", 1, retain=True)
    late = Client(port, "rsub-" + name, proto)
    late.subscribe(topic, 1)
    msg = late.recv()
    assert (msg.payload, msg.retain) == (b"new", True), (msg.payload, msg.retain)
    late.expect_nothing()
    pub.publish(topic, b"", 1, retain=True)
    later = Client(port, "rsub2-" + name, proto)
    later.subscribe(topic, 1)
    later.expect_nothing()
    for c in (pub, late, later):
        c.disconnect()


def check_will(port, name, proto):
    topic = "paho/%s/will" % name
    watcher = Client(port, "watch-" + name, proto)
    watcher.subscribe(topic, 1)
    clean = Client(port, "clean-" + name, proto, will=(topic, b"not sent", 1, False))
    clean.disconnect()
    watcher.expect_nothing()
    dying = Client(port, "dying-" + name, proto, will=(topic, b"gone", 1, False))
    dying.kill()
    msg = watcher.recv()
    assert msg.payload == b"gone", msg.payload
    watcher.disconnect()


def check_persistent_session(port, name, proto):
    topic = "paho/%s/queue" % name
    sub = Client(port, "persist-" + name, proto, clean=False, session_expiry=300)
    sub.subscribe(topic, 1)
    sub.disconnect()
    pub = Client(port, "qpub-" + name, proto)
    pub.publish(topic, b"while away", 1)
    pub.disconnect()
    sub = Client(port, "persist-" + name, proto, clean=False, session_expiry=300)
    assert sub.session_present, "session present expected"
    msg = sub.recv()
    assert msg.payload == b"while away", msg.payload
    sub.disconnect()


def check_user_properties(port, name, proto):
    if proto != mqtt.MQTTv5:
        return "n/a"
    topic = "paho/v5/props"
    sub = Client(port, "psub", proto)
    sub.subscribe(topic, 1)
    pub = Client(port, "ppub", proto)
    props = Properties(PacketTypes.PUBLISH)
    props.UserProperty = [("device", "car-1"), ("fw", "1.2.3")]
    props.ContentType = "application/geo+json"
    pub.publish(topic, b"{}", 1, properties=props)
    msg = sub.recv()
    got = getattr(msg.properties, "UserProperty", None)
    assert got == [("device", "car-1"), ("fw", "1.2.3")], got
    assert getattr(msg.properties, "ContentType", None) == "application/geo+json"
    sub.disconnect()
    pub.disconnect()


CHECKS = [
    ("QoS 0/1/2 round trip", check_qos_roundtrip),
    ("retained set, replace, clear", check_retained),
    ("will on unclean close, none on DISCONNECT", check_will),
    ("persistent session queue", check_persistent_session),
    ("user properties and content type", check_user_properties),
]


def main():
    binary = os.environ.get("MAPCAST_BIN", "target/debug/mapcast")
    data_dir = tempfile.mkdtemp(prefix="mapcast-paho-")
    proc, port = start_server(binary, data_dir)
    try:
        from importlib.metadata import version

        paho_version = version("paho-mqtt")
    except Exception:
        paho_version = "?"
    print("# mapcast MQTT on 127.0.0.1:%d, paho-mqtt %s" % (port, paho_version))
    passed = failed = 0
    try:
        for pname, proto in PROTOCOLS:
            for cname, check in CHECKS:
                label = "%s %s" % (pname, cname)
                try:
                    if check(port, pname.replace(".", ""), proto) == "n/a":
                        continue
                    passed += 1
                    print("ok - " + label)
                except Exception:
                    failed += 1
                    print("FAIL - " + label)
                    for line in traceback.format_exc().splitlines():
                        print("#   " + line)
    finally:
        proc.kill()
        proc.wait()
    print("%d passed, %d failed" % (passed, failed))
    return 0 if failed == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
