"""MQTT 5 properties pass through the broker: user properties (order and duplicates
kept), content type, response topic, correlation data, payload format indicator and
message expiry; a v3.1.1 subscriber gets the same message without them."""

from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from common import Client, check, run, unique

USER_PROPS = [("k", "v"), ("k", "v2"), ("unicode", "h\u00e9llo \u2603"), ("empty", "")]


def body(args, checks):
    topic = unique("props") + "/req"
    v5_sub = Client(args)
    v5_sub.connect()
    v5_sub.subscribe(topic, 1)
    v3_sub = Client(type(args)(host=args.host, port=args.port, version="311"))
    v3_sub.connect()
    v3_sub.subscribe(topic, 1)

    pub = Client(args)
    pub.connect()
    props = Properties(PacketTypes.PUBLISH)
    props.UserProperty = USER_PROPS
    props.ContentType = "application/json"
    props.ResponseTopic = topic + "/reply"
    props.CorrelationData = b"\x00\x01corr\xff"
    props.PayloadFormatIndicator = 1
    props.MessageExpiryInterval = 3600
    pub.publish(topic, '{"n": 1}', qos=1, properties=props)

    msg = v5_sub.wait_messages(1)[0]
    got = msg.properties
    check(msg.payload == b'{"n": 1}', f"payload {msg.payload!r}")
    user = [tuple(p) for p in getattr(got, "UserProperty", [])]
    check(user == USER_PROPS, f"user properties {user}, want {USER_PROPS} in order")
    checks["user_properties"] = True
    check(getattr(got, "ContentType", None) == "application/json", f"content type {getattr(got, 'ContentType', None)!r}")
    checks["content_type"] = True
    check(getattr(got, "ResponseTopic", None) == topic + "/reply", f"response topic {getattr(got, 'ResponseTopic', None)!r}")
    checks["response_topic"] = True
    check(getattr(got, "CorrelationData", None) == b"\x00\x01corr\xff", f"correlation data {getattr(got, 'CorrelationData', None)!r}")
    checks["correlation_data"] = True
    check(getattr(got, "PayloadFormatIndicator", None) == 1, f"payload format indicator {getattr(got, 'PayloadFormatIndicator', None)!r}")
    expiry = getattr(got, "MessageExpiryInterval", None)
    check(expiry is not None and 3590 <= expiry <= 3600, f"message expiry {expiry!r}, want about 3600")
    checks["expiry_and_format"] = True

    old = v3_sub.wait_messages(1)[0]
    check(old.payload == b'{"n": 1}' and old.topic == topic, f"v3.1.1 subscriber got {old.topic} {old.payload!r}")
    check(v3_sub.disconnected is None, "v3.1.1 subscriber lost its connection")
    checks["v311_subscriber_clean"] = True
    for c in (v5_sub, v3_sub, pub):
        c.disconnect()


if __name__ == "__main__":
    run("properties", body, versions=("5",))
