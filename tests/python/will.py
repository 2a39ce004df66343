"""Will messages: published when a client's socket closes without DISCONNECT, not after a
normal DISCONNECT; (v5) published after DISCONNECT with reason 0x04."""

from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.reasoncodes import ReasonCode

from common import Client, check, payloads, run, unique


def body(args, checks):
    topic = unique("will") + "/status"
    watcher = Client(args)
    watcher.connect()
    watcher.subscribe(topic, 1)

    # A normal DISCONNECT discards the will.
    polite = Client(args, will={"topic": topic, "payload": "will-polite", "qos": 1})
    polite.connect()
    polite.disconnect()

    # A crash (socket closed, no DISCONNECT) publishes it.
    crash = Client(args, will={"topic": topic, "payload": "will-crash", "qos": 1, "retain": False})
    crash.connect()
    crash.drop()
    watcher.wait_messages(1)
    checks["will_on_abnormal_close"] = True

    if args.version == "5":
        # DISCONNECT with reason 0x04 asks for the will to be published.
        asked = Client(args, will={"topic": topic, "payload": "will-asked", "qos": 1})
        asked.connect()
        asked.disconnect(reasoncode=ReasonCode(PacketTypes.DISCONNECT, "Disconnect with will message"))
        watcher.wait_messages(2)
        checks["will_on_disconnect_0x04"] = True

    # Everything published before the marker has arrived once the marker has.
    marker = Client(args)
    marker.connect()
    marker.publish(topic, "marker", qos=1)
    watcher.wait("the marker", lambda: "marker" in payloads(watcher.messages))
    got = payloads(watcher.received())
    want = ["will-crash"] + (["will-asked"] if args.version == "5" else []) + ["marker"]
    check(got == want, f"watcher got {got}, want {want} (no will after a normal DISCONNECT)")
    checks["no_will_after_normal_disconnect"] = True
    watcher.disconnect()
    marker.disconnect()


if __name__ == "__main__":
    run("will", body)
