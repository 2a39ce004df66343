"""Shared helpers for the paho-mqtt (2.x) interop scripts.

Every script takes the broker's host and port and `--version 311|5`, runs its checks,
prints one JSON object on stdout ({"ok": true/false, "script": ..., "version": ...,
"checks": {...}, "error": ...}) and exits 0 only when every check passed. A check that
fails raises `Failure`; `run()` turns that into the JSON result and exit status 1.
Nothing here sleeps for a guess: every wait is for a condition, with a timeout.
"""

import argparse
import json
import socket
import sys
import threading
import time
import traceback
import uuid

import paho.mqtt.client as mqtt
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

TIMEOUT = 10.0


class Failure(Exception):
    pass


def check(cond, message):
    if not cond:
        raise Failure(message)


def unique(prefix):
    return f"{prefix}-{uuid.uuid4().hex[:12]}"


def parse_args(description, versions=("311", "5")):
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("host")
    parser.add_argument("port", type=int)
    parser.add_argument("--version", choices=versions, default=versions[-1])
    return parser.parse_args()


def run(script, body, versions=("311", "5")):
    """Parses the arguments, runs `body(args, checks)` and reports as JSON."""
    args = parse_args(script, versions)
    checks = {}
    result = {"script": script, "version": args.version, "checks": checks}
    try:
        body(args, checks)
        result["ok"] = True
    except Failure as e:
        result["ok"] = False
        result["error"] = str(e)
    except Exception as e:  # noqa: BLE001 - any crash is a failed run, with its trace
        result["ok"] = False
        result["error"] = f"{type(e).__name__}: {e}"
        result["trace"] = traceback.format_exc()
    print(json.dumps(result, sort_keys=True))
    sys.exit(0 if result["ok"] else 1)


def connect_properties(session_expiry=None):
    if session_expiry is None:
        return None
    props = Properties(PacketTypes.CONNECT)
    props.SessionExpiryInterval = session_expiry
    return props


class Client:
    """A paho client driven by its own network thread, with blocking, bounded waits."""

    def __init__(self, args, client_id=None, clean=True, session_expiry=None, will=None):
        self.version = args.version
        self.host = args.host
        self.port = args.port
        self.client_id = client_id or unique("py")
        self.clean = clean
        self.session_expiry = session_expiry
        protocol = mqtt.MQTTv5 if self.version == "5" else mqtt.MQTTv311
        kwargs = {"client_id": self.client_id, "protocol": protocol, "reconnect_on_failure": False}
        if self.version != "5":
            kwargs["clean_session"] = clean
        self.mqttc = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, **kwargs)
        if will is not None:
            self.mqttc.will_set(**will)
        self.cond = threading.Condition()
        self.messages = []
        self.connack = None  # (reason code, session present)
        self.subacks = {}  # mid -> [reason codes as ints]
        self.disconnected = None  # reason code int once the connection ended
        self.mqttc.on_connect = self._on_connect
        self.mqttc.on_message = self._on_message
        self.mqttc.on_subscribe = self._on_subscribe
        self.mqttc.on_disconnect = self._on_disconnect

    # paho callbacks (VERSION2 signatures), run on the network thread.
    def _on_connect(self, _c, _u, flags, reason_code, _props):
        with self.cond:
            self.connack = (reason_code.value, bool(flags.session_present))
            self.cond.notify_all()

    def _on_message(self, _c, _u, msg):
        with self.cond:
            self.messages.append(msg)
            self.cond.notify_all()

    def _on_subscribe(self, _c, _u, mid, reason_codes, _props):
        with self.cond:
            self.subacks[mid] = [rc.value for rc in reason_codes]
            self.cond.notify_all()

    def _on_disconnect(self, _c, _u, _flags, reason_code, _props):
        with self.cond:
            self.disconnected = getattr(reason_code, "value", reason_code)
            self.cond.notify_all()

    def wait(self, what, predicate, timeout=TIMEOUT):
        deadline = time.monotonic() + timeout
        with self.cond:
            while not predicate():
                left = deadline - time.monotonic()
                if left <= 0:
                    raise Failure(f"{self.client_id}: timed out after {timeout}s waiting for {what}")
                self.cond.wait(left)

    def connect(self, expect_success=True):
        """Connects and waits for CONNACK; returns (reason code, session present)."""
        if self.version == "5":
            clean_start = self.clean
            props = connect_properties(self.session_expiry)
            self.mqttc.connect(self.host, self.port, 30, clean_start=clean_start, properties=props)
        else:
            self.mqttc.connect(self.host, self.port, 30)
        self.mqttc.loop_start()
        self.wait("CONNACK", lambda: self.connack is not None)
        if expect_success:
            check(self.connack[0] == 0, f"{self.client_id}: CONNACK refused with {self.connack[0]}")
        return self.connack

    def subscribe(self, topic, qos=0, options=None):
        """Subscribes and waits for SUBACK; returns the granted codes."""
        if options is not None:
            rc, mid = self.mqttc.subscribe(topic, options=options)
        else:
            rc, mid = self.mqttc.subscribe(topic, qos)
        check(rc == mqtt.MQTT_ERR_SUCCESS, f"subscribe {topic} failed locally: {rc}")
        self.wait(f"SUBACK for {topic}", lambda: mid in self.subacks)
        return self.subacks[mid]

    def publish(self, topic, payload, qos=0, retain=False, properties=None):
        """Publishes and waits until the flow finished (PUBACK/PUBCOMP for QoS 1/2)."""
        info = self.mqttc.publish(topic, payload, qos=qos, retain=retain, properties=properties)
        check(info.rc == mqtt.MQTT_ERR_SUCCESS, f"publish to {topic} failed locally: {info.rc}")
        info.wait_for_publish(TIMEOUT)
        check(info.is_published(), f"publish to {topic} (QoS {qos}) not acknowledged within {TIMEOUT}s")
        return info

    def received(self, topic=None):
        with self.cond:
            return [m for m in self.messages if topic is None or m.topic == topic]

    def wait_messages(self, count, topic=None, timeout=TIMEOUT):
        what = f"{count} message(s)" + (f" on {topic}" if topic else "")
        self.wait(what, lambda: len([m for m in self.messages if topic is None or m.topic == topic]) >= count, timeout)
        return self.received(topic)

    def disconnect(self, reasoncode=None):
        """A normal DISCONNECT, then the network thread stops."""
        self.mqttc.disconnect(reasoncode=reasoncode)
        self.mqttc.loop_stop()

    def drop(self):
        """Closes the socket without DISCONNECT, as a crashed client would."""
        sock = self.mqttc.socket()
        self.mqttc.loop_stop()
        if sock is not None:
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            sock.close()


def payloads(messages):
    return [m.payload.decode("utf-8", "replace") for m in messages]
