"""A persistent session (3.1.1 clean session 0; v5 clean start 0 with session expiry)
keeps its subscription while the client is offline and gets the QoS 1 messages queued
meanwhile, once each and in order, with session present set on reconnect."""

from common import Client, check, payloads, run, unique

N = 20


def body(args, checks):
    client_id = unique("persist")
    topic = client_id + "/queue"
    expiry = 300 if args.version == "5" else None

    first = Client(args, client_id=client_id, clean=True, session_expiry=expiry)
    _, present = first.connect()
    check(not present, "session present on a clean first connect")
    first.disconnect()
    # Make the session persistent (a clean start discards any earlier one).
    first = Client(args, client_id=client_id, clean=False, session_expiry=expiry)
    first.connect()
    check(first.subscribe(topic, 1) == [1], "QoS 1 subscription not granted")
    first.disconnect()

    pub = Client(args)
    pub.connect()
    sent = [f"offline-{i}" for i in range(N)]
    for p in sent:
        pub.publish(topic, p, qos=1)

    back = Client(args, client_id=client_id, clean=False, session_expiry=expiry)
    _, present = back.connect()
    check(present, "CONNACK without session present for a persistent session")
    checks["session_present"] = True
    back.wait_messages(N)
    pub.publish(topic, "online", qos=1)
    back.wait("the online message", lambda: "online" in payloads(back.messages))
    got = payloads(back.received())
    check(got == sent + ["online"], f"got {got}, want the {N} queued messages once each, in order, then 'online'")
    checks["queued_while_offline"] = N
    back.disconnect()
    pub.disconnect()


if __name__ == "__main__":
    run("persistent_session", body)
