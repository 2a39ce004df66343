"""Retained messages: the last retained message goes to a late subscriber, flagged as
retained; an empty retained payload clears it; (v5) Retain Handling 2 sends none."""

from paho.mqtt.subscribeoptions import SubscribeOptions

from common import Client, check, payloads, run, unique


def body(args, checks):
    topic = unique("ret") + "/state"
    pub = Client(args)
    pub.connect()
    pub.publish(topic, "r1", qos=1, retain=True)
    pub.publish(topic, "r2", qos=1, retain=True)

    late = Client(args)
    late.connect()
    late.subscribe(topic, 1)
    got = late.wait_messages(1)
    check(payloads(got) == ["r2"], f"late subscriber got {payloads(got)}, want the last retained ['r2']")
    check(got[0].retain, "retained message delivered without the retain flag")
    checks["late_subscriber_gets_last_retained"] = True

    # A live subscriber gets later publishes without the retain flag (retain as published off).
    pub.publish(topic, "live", qos=1, retain=False)
    got = late.wait_messages(2)
    check(payloads(got)[1] == "live" and not got[1].retain, "live message wrong or flagged retained")

    if args.version == "5":
        rh2 = Client(args)
        rh2.connect()
        rh2.subscribe(topic, options=SubscribeOptions(qos=1, retainHandling=2))
        pub.publish(topic, "marker-rh2", qos=1)
        got = rh2.wait_messages(1)
        check(payloads(got) == ["marker-rh2"], f"Retain Handling 2 subscriber got {payloads(got)}, want no retained message")
        checks["retain_handling_2"] = True
        rh2.disconnect()

    # Clear it, then a new subscriber must see the marker first, with no retained message.
    pub.publish(topic, b"", qos=1, retain=True)
    after = Client(args)
    after.connect()
    after.subscribe(topic, 1)
    pub.publish(topic, "marker", qos=1)
    got = after.wait_messages(1)
    check(payloads(got) == ["marker"], f"subscriber after clear got {payloads(got)}, want only ['marker']")
    checks["cleared_by_empty_payload"] = True
    for c in (pub, late, after):
        c.disconnect()


if __name__ == "__main__":
    run("retained", body)
