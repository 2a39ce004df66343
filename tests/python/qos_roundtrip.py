"""QoS 0/1/2 publish/subscribe round trip with exact counts.

One subscriber at QoS 2 and one at QoS 1 each receive every message exactly once, with the
delivered QoS the lower of the publish QoS and the granted QoS, in publish order.
"""

from common import Client, check, payloads, run, unique

N = 50


def body(args, checks):
    base = unique("rt")
    sub2 = Client(args)
    sub2.connect()
    check(sub2.subscribe(f"{base}/#", 2) == [2], "QoS 2 subscription not granted at QoS 2")
    sub1 = Client(args)
    sub1.connect()
    check(sub1.subscribe(f"{base}/#", 1) == [1], "QoS 1 subscription not granted at QoS 1")
    pub = Client(args)
    pub.connect()

    for qos in (0, 1, 2):
        topic = f"{base}/q{qos}"
        sent = [f"q{qos}-{i}" for i in range(N)]
        for p in sent:
            pub.publish(topic, p, qos=qos)
        for sub, granted in ((sub2, 2), (sub1, 1)):
            got = sub.wait_messages(N, topic)
            check(payloads(got) == sent, f"QoS {qos} to sub at {granted}: got {payloads(got)[:5]}... ({len(got)}), want {N} in order")
            want_qos = min(qos, granted)
            bad = [m.qos for m in got if m.qos != want_qos]
            check(not bad, f"QoS {qos} to sub at {granted}: delivered at QoS {bad[:3]}, want {want_qos}")
        checks[f"qos{qos}"] = N

    # A marker published last: once it has arrived, nothing sent before it can still be on
    # its way, so the counts above are final (no duplicates).
    pub.publish(f"{base}/end", "end", qos=1)
    for sub in (sub2, sub1):
        sub.wait_messages(1, f"{base}/end")
        total = len(sub.received())
        check(total == 3 * N + 1, f"{sub.client_id} received {total} messages, want exactly {3 * N + 1}")
    checks["exact_counts"] = True
    for c in (sub2, sub1, pub):
        c.disconnect()


if __name__ == "__main__":
    run("qos_roundtrip", body)
