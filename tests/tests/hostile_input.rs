//! Hostile byte streams against a live node, while a well-behaved subscriber keeps
//! receiving QoS 1 messages from a well-behaved publisher.
//!
//! Every hostile connection must be closed by the node within a bounded time; where MQTT 5
//! says a DISCONNECT (or CONNACK) with a reason code is sent, it must carry the right one;
//! nothing a hostile client sends may reach the good subscriber; the good subscriber must
//! get every message published during the barrage exactly once; and the node must still
//! accept new clients afterwards. All loops are bounded; all traffic is on 127.0.0.1.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rumqttc::{AsyncClient, Event, MqttOptions, Packet as RPacket, QoS};
use tern_tests::external::raw::{self, Closure, Conn, End, Next};
use tern_tests::{wait_until, TestNode};
use tokio::task::JoinSet;

/// Seconds a connection has to complete CONNECT (set low for this test).
const CONNECT_TIMEOUT_SECS: u64 = 2;
/// The node's maximum packet size in this test.
const MAX_PACKET: u32 = 64 * 1024;
/// How long any hostile connection may stay open after its last byte: the connect timeout
/// or a 2 s keep-alive (closed after 1.5 x 2 s), plus slack for a loaded 2-core machine.
const CLOSE_BOUND: Duration = Duration::from_secs(CONNECT_TIMEOUT_SECS + 8);
/// Keep-alive requested by hostile clients that get past CONNECT.
const HOSTILE_KEEP_ALIVE: u16 = 2;

type CaseResult = Result<(), String>;

// ---------------------------------------------------------------------------------------
// Building blocks
// ---------------------------------------------------------------------------------------

/// A small deterministic generator, so a failing seed can be replayed.
struct XorShift(u64);

impl XorShift {
    fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.0 = x;
        x
    }

    fn bytes(&mut self, len: usize) -> Vec<u8> {
        (0..len).map(|_| self.next() as u8).collect()
    }
}

fn id(prefix: &str) -> String {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    format!("{prefix}-{}", NEXT.fetch_add(1, Ordering::Relaxed))
}

/// Opens a raw connection that has completed a 3.1.1 handshake with keep-alive 60 s, so
/// that only the node's handling of what the case sends next can close it in time.
async fn v311(addr: SocketAddr) -> Result<Conn, String> {
    v311_keep_alive(addr, 60).await
}

async fn v311_keep_alive(addr: SocketAddr, keep_alive: u16) -> Result<Conn, String> {
    let mut conn = Conn::open(addr)
        .await
        .map_err(|e| format!("connect: {e}"))?;
    match conn
        .handshake(&raw::connect_v311(&id("hostile"), keep_alive))
        .await
    {
        Some(p) if p.reason_code() == Some(0) => Ok(conn),
        other => Err(format!("3.1.1 handshake: {other:?}")),
    }
}

/// Opens a raw connection that has completed a 5.0 handshake with keep-alive 60 s.
async fn v5(addr: SocketAddr) -> Result<Conn, String> {
    v5_keep_alive(addr, 60).await
}

async fn v5_keep_alive(addr: SocketAddr, keep_alive: u16) -> Result<Conn, String> {
    let mut conn = Conn::open(addr)
        .await
        .map_err(|e| format!("connect: {e}"))?;
    match conn
        .handshake(&raw::connect_v5(&id("hostile5"), keep_alive, &[]))
        .await
    {
        Some(p) if p.reason_code() == Some(0) => Ok(conn),
        other => Err(format!("5.0 handshake: {other:?}")),
    }
}

async fn open(addr: SocketAddr) -> Result<Conn, String> {
    Conn::open(addr).await.map_err(|e| format!("connect: {e}"))
}

/// Sends `bytes` (a write error means the node already closed, which is fine) and reads
/// until the node closes; an error if it is still open after `bound`.
async fn send_expect_close(
    mut conn: Conn,
    bytes: &[u8],
    bound: Duration,
) -> Result<Closure, String> {
    let _ = conn.send(bytes).await;
    expect_close(conn, bound).await
}

async fn expect_close(conn: Conn, bound: Duration) -> Result<Closure, String> {
    let closure = conn.read_until_closed(bound).await;
    if closure.closed() {
        Ok(closure)
    } else {
        Err(format!(
            "not closed by the node within {bound:?}: {}",
            closure.describe()
        ))
    }
}

/// The connection ended with exactly one DISCONNECT, last, with a reason code in `allowed`.
fn expect_disconnect(closure: &Closure, allowed: &[u8]) -> CaseResult {
    let want: Vec<String> = allowed.iter().map(|c| format!("0x{c:02X}")).collect();
    let disconnects = closure.of_kind(raw::DISCONNECT);
    match disconnects.as_slice() {
        [d] if closure.packets.last() == Some(*d) => match d.reason_code() {
            Some(rc) if allowed.contains(&rc) => Ok(()),
            rc => Err(format!(
                "DISCONNECT reason {rc:02X?}, want {}: {}",
                want.join(" or "),
                closure.describe()
            )),
        },
        [] => Err(format!(
            "closed without DISCONNECT, want one with {}: {}",
            want.join(" or "),
            closure.describe()
        )),
        _ => Err(format!(
            "want one final DISCONNECT with {}: {}",
            want.join(" or "),
            closure.describe()
        )),
    }
}

/// Nothing but, at most, a DISCONNECT whose reason code is in `allowed` (MQTT 5 lets the
/// server send one or not).
fn expect_no_answer_or_disconnect(closure: &Closure, allowed: &[u8]) -> CaseResult {
    if closure.packets.is_empty() {
        return Ok(());
    }
    expect_disconnect(closure, allowed)
}

/// Refused before or at CONNECT: no packet at all, or one CONNACK with a code in `allowed`.
fn expect_refused(closure: &Closure, allowed: &[u8]) -> CaseResult {
    match closure.packets.as_slice() {
        [] => Ok(()),
        [p] if p.kind() == raw::CONNACK
            && p.reason_code().is_some_and(|rc| allowed.contains(&rc)) =>
        {
            Ok(())
        }
        _ => Err(format!(
            "want no answer or CONNACK with {allowed:02X?}: {}",
            closure.describe()
        )),
    }
}

/// Nothing at all may come back (a first packet that is not CONNECT).
fn expect_silence(closure: &Closure) -> CaseResult {
    if closure.packets.is_empty() && closure.leftover.is_empty() {
        Ok(())
    } else {
        Err(format!(
            "the node answered a connection that never sent CONNECT: {}",
            closure.describe()
        ))
    }
}

fn varint(n: usize) -> Vec<u8> {
    raw::remaining_length(n)
}

// ---------------------------------------------------------------------------------------
// The hostile cases
// ---------------------------------------------------------------------------------------

async fn garbage_before_connect(addr: SocketAddr, seed: u64) -> CaseResult {
    let mut rng = XorShift(seed);
    let len = 64 + (rng.next() % 4000) as usize;
    let bytes = rng.bytes(len);
    let closure = send_expect_close(open(addr).await?, &bytes, CLOSE_BOUND).await?;
    let accepted = closure
        .of_kind(raw::CONNACK)
        .iter()
        .any(|p| p.reason_code() == Some(0));
    if accepted {
        return Err(format!(
            "garbage was accepted as a CONNECT: {}",
            closure.describe()
        ));
    }
    Ok(())
}

async fn garbage_after_connect_v311(addr: SocketAddr, seed: u64) -> CaseResult {
    let mut rng = XorShift(seed);
    let mut bytes = vec![0x00]; // packet type 0 is reserved
    bytes.extend(rng.bytes(500));
    send_expect_close(v311(addr).await?, &bytes, CLOSE_BOUND)
        .await
        .map(drop)
}

async fn garbage_after_connect_v5(addr: SocketAddr, seed: u64) -> CaseResult {
    let mut rng = XorShift(seed);
    let mut bytes = vec![0x00]; // packet type 0 is reserved
    bytes.extend(rng.bytes(500));
    let closure = send_expect_close(v5(addr).await?, &bytes, CLOSE_BOUND).await?;
    expect_disconnect(&closure, &[0x81, 0x82])
}

/// Fully random bytes after CONNECT: whatever they parse as, the connection ends, and any
/// DISCONNECT the node sends carries an error code.
async fn random_after_connect_v5(addr: SocketAddr, seed: u64) -> CaseResult {
    let mut rng = XorShift(seed);
    let bytes = rng.bytes(2000);
    // Random bytes may end in a packet that is merely incomplete: keep-alive closes that.
    let closure = send_expect_close(
        v5_keep_alive(addr, HOSTILE_KEEP_ALIVE).await?,
        &bytes,
        CLOSE_BOUND,
    )
    .await?;
    for d in closure.of_kind(raw::DISCONNECT) {
        if !matches!(d.reason_code(), Some(rc) if rc >= 0x80) {
            return Err(format!(
                "DISCONNECT without an error code: {}",
                closure.describe()
            ));
        }
    }
    Ok(())
}

const FIVE_BYTE_LENGTH: [u8; 5] = [0xFF, 0xFF, 0xFF, 0xFF, 0x7F];

async fn five_byte_remaining_length_first(addr: SocketAddr) -> CaseResult {
    let mut bytes = vec![0x10];
    bytes.extend(FIVE_BYTE_LENGTH);
    let closure = send_expect_close(open(addr).await?, &bytes, CLOSE_BOUND).await?;
    expect_refused(&closure, &[0x81])
}

async fn five_byte_remaining_length_v311(addr: SocketAddr) -> CaseResult {
    let mut bytes = vec![0x30];
    bytes.extend(FIVE_BYTE_LENGTH);
    send_expect_close(v311(addr).await?, &bytes, CLOSE_BOUND)
        .await
        .map(drop)
}

async fn five_byte_remaining_length_v5(addr: SocketAddr) -> CaseResult {
    let mut bytes = vec![0x30];
    bytes.extend(FIVE_BYTE_LENGTH);
    let closure = send_expect_close(v5(addr).await?, &bytes, CLOSE_BOUND).await?;
    expect_disconnect(&closure, &[0x81])
}

fn publish_header_claiming(len: usize) -> Vec<u8> {
    let mut bytes = vec![0x30];
    bytes.extend(varint(len));
    bytes.extend(raw::string(b"good/data"));
    bytes
}

/// A PUBLISH that claims 200 MB must be refused from its header, at once: the node may not
/// wait for (or buffer) the body. Keep-alive 60 s, so only the size check can close it.
async fn publish_claiming_200mb_v5(addr: SocketAddr) -> CaseResult {
    let conn = v5(addr).await?;
    let closure = send_expect_close(
        conn,
        &publish_header_claiming(200_000_000),
        Duration::from_secs(5),
    )
    .await?;
    expect_disconnect(&closure, &[0x95])
}

async fn publish_claiming_200mb_v311(addr: SocketAddr) -> CaseResult {
    let conn = v311(addr).await?;
    send_expect_close(
        conn,
        &publish_header_claiming(200_000_000),
        Duration::from_secs(5),
    )
    .await
    .map(drop)
}

async fn connect_claiming_200mb(addr: SocketAddr) -> CaseResult {
    let mut bytes = vec![0x10];
    bytes.extend(varint(200_000_000));
    bytes.extend(raw::string(b"MQTT"));
    let closure = send_expect_close(open(addr).await?, &bytes, CLOSE_BOUND).await?;
    expect_refused(&closure, &[0x81, 0x95])
}

/// A whole PUBLISH just over the node's maximum packet size.
async fn publish_too_large_v5(addr: SocketAddr) -> CaseResult {
    let conn = v5_keep_alive(addr, 60).await?;
    let payload = vec![b'x'; MAX_PACKET as usize + 1000];
    let bytes = raw::publish(b"good/data", 0, 0, Some(&[]), &payload);
    let closure = send_expect_close(conn, &bytes, CLOSE_BOUND).await?;
    expect_disconnect(&closure, &[0x95])
}

async fn publish_too_large_v311(addr: SocketAddr) -> CaseResult {
    let payload = vec![b'x'; MAX_PACKET as usize + 1000];
    let bytes = raw::publish(b"good/data", 1, 7, None, &payload);
    let closure = send_expect_close(v311(addr).await?, &bytes, CLOSE_BOUND).await?;
    if closure.of_kind(raw::PUBACK).is_empty() {
        Ok(())
    } else {
        Err(format!(
            "an oversized PUBLISH was acknowledged: {}",
            closure.describe()
        ))
    }
}

async fn truncated_connect_then_silence(addr: SocketAddr) -> CaseResult {
    let connect = raw::connect_v311(&id("trunc"), 60);
    let closure = send_expect_close(
        open(addr).await?,
        &connect[..connect.len() / 2],
        CLOSE_BOUND,
    )
    .await?;
    expect_silence(&closure)
}

async fn silent_connection(addr: SocketAddr) -> CaseResult {
    let closure = expect_close(open(addr).await?, CLOSE_BOUND).await?;
    expect_silence(&closure)
}

/// After CONNECT with keep-alive 2 s, half a PUBLISH and then nothing: closed by keep-alive.
async fn truncated_publish_then_silence_v311(addr: SocketAddr) -> CaseResult {
    let bytes = raw::publish(b"good/data", 1, 3, None, b"never finished");
    send_expect_close(
        v311_keep_alive(addr, HOSTILE_KEEP_ALIVE).await?,
        &bytes[..bytes.len() - 5],
        CLOSE_BOUND,
    )
    .await
    .map(drop)
}

async fn truncated_publish_then_silence_v5(addr: SocketAddr) -> CaseResult {
    let bytes = raw::publish(b"good/data", 1, 3, Some(&[]), b"never finished");
    let closure = send_expect_close(
        v5_keep_alive(addr, HOSTILE_KEEP_ALIVE).await?,
        &bytes[..bytes.len() - 5],
        CLOSE_BOUND,
    )
    .await?;
    expect_no_answer_or_disconnect(&closure, &[0x8D])
}

/// Keep-alive 2 s, then not a byte more.
async fn keep_alive_expiry_v5(addr: SocketAddr) -> CaseResult {
    let closure = expect_close(v5_keep_alive(addr, HOSTILE_KEEP_ALIVE).await?, CLOSE_BOUND).await?;
    expect_no_answer_or_disconnect(&closure, &[0x8D])
}

async fn ping_before_connect(addr: SocketAddr) -> CaseResult {
    let closure = send_expect_close(open(addr).await?, &[0xC0, 0x00], CLOSE_BOUND).await?;
    expect_silence(&closure)
}

async fn subscribe_before_connect(addr: SocketAddr) -> CaseResult {
    let closure = send_expect_close(
        open(addr).await?,
        &raw::subscribe(1, "good/#", 1, false),
        CLOSE_BOUND,
    )
    .await?;
    expect_silence(&closure)
}

/// A PUBLISH without CONNECT: refused, and never delivered (the good subscriber would see it).
async fn publish_before_connect(addr: SocketAddr) -> CaseResult {
    let bytes = raw::publish(b"good/data", 1, 1, None, b"hostile-no-connect");
    let closure = send_expect_close(open(addr).await?, &bytes, CLOSE_BOUND).await?;
    expect_silence(&closure)
}

/// SUBSCRIBE must have flags 0b0010.
async fn subscribe_reserved_flags_v311(addr: SocketAddr) -> CaseResult {
    let mut bytes = raw::subscribe(1, "good/#", 1, false);
    bytes[0] = 0x80;
    let closure = send_expect_close(v311(addr).await?, &bytes, CLOSE_BOUND).await?;
    if closure.of_kind(raw::SUBACK).is_empty() {
        Ok(())
    } else {
        Err(format!(
            "SUBSCRIBE with reserved flags was answered: {}",
            closure.describe()
        ))
    }
}

async fn subscribe_reserved_flags_v5(addr: SocketAddr) -> CaseResult {
    let mut bytes = raw::subscribe(1, "good/#", 1, true);
    bytes[0] = 0x80;
    let closure = send_expect_close(v5(addr).await?, &bytes, CLOSE_BOUND).await?;
    expect_disconnect(&closure, &[0x81])
}

async fn pingreq_reserved_flags_v5(addr: SocketAddr) -> CaseResult {
    let closure = send_expect_close(v5(addr).await?, &[0xC1, 0x00], CLOSE_BOUND).await?;
    expect_disconnect(&closure, &[0x81])
}

/// DUP set on a QoS 0 PUBLISH is malformed [MQTT-3.3.1-2].
async fn publish_dup_with_qos0_v5(addr: SocketAddr) -> CaseResult {
    let mut bytes = raw::publish(b"good/data", 0, 0, Some(&[]), b"hostile-dup-qos0");
    bytes[0] |= 0x08;
    let closure = send_expect_close(v5(addr).await?, &bytes, CLOSE_BOUND).await?;
    expect_disconnect(&closure, &[0x81])
}

/// The reserved bit of the CONNECT flags must be 0 [MQTT-3.1.2-3].
async fn connect_reserved_flag(addr: SocketAddr, v5: bool) -> CaseResult {
    let mut bytes = if v5 {
        raw::connect_v5(&id("rsv"), 60, &[])
    } else {
        raw::connect_v311(&id("rsv"), 60)
    };
    // first byte, length (1 byte), protocol name (6), level (1), then the flags
    bytes[9] |= 0x01;
    let closure = send_expect_close(open(addr).await?, &bytes, CLOSE_BOUND).await?;
    if v5 {
        expect_refused(&closure, &[0x81, 0x82])
    } else {
        expect_refused(&closure, &[])
    }
}

async fn invalid_utf8_topic_v311(addr: SocketAddr) -> CaseResult {
    let bytes = raw::publish(b"good/\xC3\x28", 1, 1, None, b"hostile-utf8");
    let closure = send_expect_close(v311(addr).await?, &bytes, CLOSE_BOUND).await?;
    if closure.of_kind(raw::PUBACK).is_empty() {
        Ok(())
    } else {
        Err(format!(
            "PUBLISH to an invalid UTF-8 topic was acknowledged: {}",
            closure.describe()
        ))
    }
}

async fn invalid_utf8_topic_v5(addr: SocketAddr) -> CaseResult {
    let bytes = raw::publish(b"good/\xC3\x28", 1, 1, Some(&[]), b"hostile-utf8");
    let closure = send_expect_close(v5(addr).await?, &bytes, CLOSE_BOUND).await?;
    expect_disconnect(&closure, &[0x81])
}

/// U+0000 in a UTF-8 string is malformed [MQTT-1.5.4-2].
async fn nul_in_topic_v5(addr: SocketAddr) -> CaseResult {
    let bytes = raw::publish(b"good/a\x00b", 1, 1, Some(&[]), b"hostile-nul");
    let closure = send_expect_close(v5(addr).await?, &bytes, CLOSE_BOUND).await?;
    expect_disconnect(&closure, &[0x81])
}

async fn invalid_utf8_filter_v5(addr: SocketAddr) -> CaseResult {
    let mut body = 1u16.to_be_bytes().to_vec();
    body.push(0);
    body.extend(raw::string(b"good/\xFF\xFE"));
    body.push(1);
    let closure =
        send_expect_close(v5(addr).await?, &raw::packet(0x82, &body), CLOSE_BOUND).await?;
    expect_disconnect(&closure, &[0x81])
}

/// A wildcard in a PUBLISH topic name [MQTT-3.3.2-2].
async fn wildcard_in_publish_topic_v5(addr: SocketAddr) -> CaseResult {
    let bytes = raw::publish(b"good/+", 1, 1, Some(&[]), b"hostile-wildcard");
    let closure = send_expect_close(v5(addr).await?, &bytes, CLOSE_BOUND).await?;
    expect_disconnect(&closure, &[0x90, 0x82, 0x81])
}

async fn qos3_v311(addr: SocketAddr) -> CaseResult {
    let mut bytes = raw::publish(b"good/data", 1, 1, None, b"hostile-qos3");
    bytes[0] = 0x36;
    let closure = send_expect_close(v311(addr).await?, &bytes, CLOSE_BOUND).await?;
    if closure.of_kind(raw::PUBACK).is_empty() {
        Ok(())
    } else {
        Err(format!(
            "a QoS 3 PUBLISH was acknowledged: {}",
            closure.describe()
        ))
    }
}

async fn qos3_v5(addr: SocketAddr) -> CaseResult {
    let mut bytes = raw::publish(b"good/data", 1, 1, Some(&[]), b"hostile-qos3");
    bytes[0] = 0x36;
    let closure = send_expect_close(v5(addr).await?, &bytes, CLOSE_BOUND).await?;
    expect_disconnect(&closure, &[0x81])
}

async fn second_connect_v311(addr: SocketAddr) -> CaseResult {
    let bytes = raw::connect_v311(&id("again"), 60);
    let closure = send_expect_close(v311(addr).await?, &bytes, CLOSE_BOUND).await?;
    if closure.of_kind(raw::CONNACK).is_empty() {
        Ok(())
    } else {
        Err(format!(
            "a second CONNECT was answered: {}",
            closure.describe()
        ))
    }
}

async fn second_connect_v5(addr: SocketAddr) -> CaseResult {
    let bytes = raw::connect_v5(&id("again5"), 60, &[]);
    let closure = send_expect_close(v5(addr).await?, &bytes, CLOSE_BOUND).await?;
    expect_disconnect(&closure, &[0x82])
}

/// Topic alias above the announced maximum [MQTT-3.3.2-9]: 0x94. Alias 0 [MQTT-3.3.2-8] is
/// a protocol error the spec gives no code of its own: 0x94 or 0x82.
async fn topic_alias_out_of_range_v5(addr: SocketAddr, alias: u16) -> CaseResult {
    let mut props = vec![0x23];
    props.extend(alias.to_be_bytes());
    let bytes = raw::publish(b"good/data", 0, 0, Some(&props), b"hostile-alias");
    let closure = send_expect_close(v5(addr).await?, &bytes, CLOSE_BOUND).await?;
    expect_disconnect(&closure, if alias == 0 { &[0x94, 0x82] } else { &[0x94] })
}

/// More unacknowledged QoS 2 publishes (no PUBREL ever) than the node's Receive Maximum.
async fn receive_maximum_exceeded_v5(addr: SocketAddr, receive_maximum: u16) -> CaseResult {
    let mut conn = v5_keep_alive(addr, 60).await?;
    let mut bytes = Vec::new();
    for packet_id in 1..=receive_maximum + 1 {
        bytes.extend(raw::publish(
            b"hostile/qos2",
            2,
            packet_id,
            Some(&[]),
            b"q2",
        ));
    }
    let _ = conn.send(&bytes).await;
    let closure = expect_close(conn, CLOSE_BOUND).await?;
    let disconnect = Closure {
        packets: closure
            .of_kind(raw::DISCONNECT)
            .into_iter()
            .cloned()
            .collect(),
        ..closure
    };
    expect_disconnect(&disconnect, &[0x93])
}

/// A client id longer than `max_client_id_len`: CONNACK 0x85 (v5) or 2 (3.1.1).
async fn client_id_too_long(addr: SocketAddr, v5: bool) -> CaseResult {
    let long = "x".repeat(300);
    let bytes = if v5 {
        raw::connect_v5(&long, 60, &[])
    } else {
        raw::connect_v311(&long, 60)
    };
    let closure = send_expect_close(open(addr).await?, &bytes, CLOSE_BOUND).await?;
    let want = if v5 { 0x85 } else { 2 };
    match closure.packets.as_slice() {
        [p] if p.kind() == raw::CONNACK && p.reason_code() == Some(want) => Ok(()),
        _ => Err(format!(
            "want CONNACK 0x{want:02X} then close: {}",
            closure.describe()
        )),
    }
}

/// Protocol level 6 (no such MQTT): closed; a CONNACK, if any, says "unsupported version"
/// (0x84 in v5 form, or return code 1 in 3.1.1 form).
async fn unsupported_protocol_level(addr: SocketAddr) -> CaseResult {
    let mut bytes = raw::connect_v311(&id("lvl6"), 60);
    bytes[8] = 6;
    let closure = send_expect_close(open(addr).await?, &bytes, CLOSE_BOUND).await?;
    expect_refused(&closure, &[0x84, 1])
}

/// MQTT 3.1 ("MQIsdp", level 3) is not supported: closed, with CONNACK 1 if anything.
async fn mqtt31_connect(addr: SocketAddr) -> CaseResult {
    let mut body = raw::string(b"MQIsdp");
    body.extend([3, 0x02, 0, 60]);
    body.extend(raw::string(b"old-client"));
    let closure =
        send_expect_close(open(addr).await?, &raw::packet(0x10, &body), CLOSE_BOUND).await?;
    expect_refused(&closure, &[1])
}

async fn wrong_protocol_name(addr: SocketAddr) -> CaseResult {
    let mut bytes = raw::connect_v5(&id("name"), 60, &[]);
    bytes[4..8].copy_from_slice(b"MQTX");
    let closure = send_expect_close(open(addr).await?, &bytes, CLOSE_BOUND).await?;
    expect_refused(&closure, &[0x84, 0x81, 0x82, 1])
}

/// A filter and a topic with 20,000 levels: deep recursion in a topic trie would overflow
/// the stack and take the whole node down. Either outcome (served or refused) is fine.
async fn deep_topic_levels(addr: SocketAddr) -> CaseResult {
    let mut conn = v311(addr).await?;
    let filter = format!("{}#", "d/".repeat(20_000));
    let topic = format!("{}x", "d/".repeat(20_000));
    conn.send(&raw::subscribe(1, &filter, 1, false))
        .await
        .map_err(|e| e.to_string())?;
    let _ = conn
        .send(&raw::publish(topic.as_bytes(), 1, 2, None, b"deep"))
        .await;
    let _ = conn.send(&raw::disconnect()).await;
    expect_close(conn, CLOSE_BOUND).await.map(drop)
}

/// One byte a second of a CONNECT: closed once the connect timeout passes.
async fn slowloris(addr: SocketAddr) -> CaseResult {
    let mut conn = open(addr).await?;
    let connect = raw::connect_v311(&id("slow"), 60);
    let started = Instant::now();
    for (i, byte) in connect.iter().take(12).enumerate() {
        if conn.send(&[*byte]).await.is_err() {
            return Ok(());
        }
        // Waiting for a packet doubles as the one-second pause.
        match conn.next(Duration::from_secs(1)).await {
            Next::Ended(_) => return Ok(()),
            Next::Packet(p) => {
                return Err(format!(
                    "the node answered an incomplete CONNECT after {} bytes: {p}",
                    i + 1
                ))
            }
            Next::Timeout if started.elapsed() > CLOSE_BOUND => break,
            Next::Timeout => {}
        }
    }
    Err(format!(
        "a slowloris CONNECT was still open after {:.1?}",
        started.elapsed()
    ))
}

/// Thousands of connections opened and dropped, a few dozen at a time, in several ways.
async fn connection_storm(addr: SocketAddr, total: usize, parallel: usize) -> CaseResult {
    let done = Arc::new(AtomicU64::new(0));
    let mut set = JoinSet::new();
    for worker in 0..parallel {
        let done = done.clone();
        set.spawn(async move {
            let mut i = worker;
            while i < total {
                if let Ok(mut conn) = Conn::open(addr).await {
                    match i % 4 {
                        0 => {}
                        1 => {
                            let c = raw::connect_v311(&format!("storm-{i}"), 30);
                            let _ = conn.send(&c[..c.len() / 2]).await;
                        }
                        2 => {
                            let _ = conn
                                .send(&raw::connect_v5(&format!("storm-{i}"), 30, &[]))
                                .await;
                        }
                        _ => {
                            let _ = conn
                                .handshake(&raw::connect_v311(&format!("storm-{i}"), 30))
                                .await;
                        }
                    }
                    drop(conn);
                    done.fetch_add(1, Ordering::Relaxed);
                }
                i += parallel;
            }
        });
    }
    let all = tokio::time::timeout(Duration::from_secs(120), async {
        while set.join_next().await.is_some() {}
    })
    .await;
    let opened = done.load(Ordering::Relaxed) as usize;
    if all.is_err() {
        return Err(format!(
            "connection storm did not finish in 120 s ({opened} of {total} opened)"
        ));
    }
    if opened < total {
        return Err(format!(
            "only {opened} of {total} storm connections could be opened"
        ));
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------
// The well-behaved clients
// ---------------------------------------------------------------------------------------

#[derive(Default)]
struct Received {
    payloads: Vec<String>,
    foreign: Vec<String>,
    errors: Vec<String>,
}

/// A rumqttc 3.1.1 subscriber on good/# at QoS 1; returns once its SUBACK arrived.
async fn good_subscriber(
    addr: SocketAddr,
) -> (
    AsyncClient,
    Arc<Mutex<Received>>,
    tokio::task::JoinHandle<()>,
) {
    let mut opts = MqttOptions::new("good-subscriber", addr.ip().to_string(), addr.port());
    opts.set_keep_alive(Duration::from_secs(30));
    let (client, mut eventloop) = AsyncClient::new(opts, 100);
    let received = Arc::new(Mutex::new(Received::default()));
    let subscribed = Arc::new(AtomicBool::new(false));
    client
        .subscribe("good/#", QoS::AtLeastOnce)
        .await
        .expect("queue SUBSCRIBE");
    let task = {
        let received = received.clone();
        let subscribed = subscribed.clone();
        tokio::spawn(async move {
            loop {
                match eventloop.poll().await {
                    Ok(Event::Incoming(RPacket::SubAck(_))) => {
                        subscribed.store(true, Ordering::SeqCst)
                    }
                    Ok(Event::Incoming(RPacket::Publish(p))) => {
                        let text = String::from_utf8_lossy(&p.payload).into_owned();
                        let mut r = received.lock().unwrap();
                        if p.topic == "good/data" && text.parse::<u64>().is_ok() {
                            r.payloads.push(text);
                        } else {
                            r.foreign.push(format!("{} {:?}", p.topic, text));
                        }
                    }
                    Ok(_) => {}
                    Err(e) => {
                        received.lock().unwrap().errors.push(e.to_string());
                        return;
                    }
                }
            }
        })
    };
    assert!(
        wait_until(Duration::from_secs(10), || subscribed
            .load(Ordering::SeqCst))
        .await,
        "good subscriber got no SUBACK"
    );
    (client, received, task)
}

/// A rumqttc 3.1.1 publisher sending QoS 1 messages "0", "1", ... to good/data until told
/// to stop (at most `max`); returns how many it sent, after all were acknowledged.
async fn good_publisher(addr: SocketAddr, stop: Arc<AtomicBool>, max: u64) -> Result<u64, String> {
    let mut opts = MqttOptions::new("good-publisher", addr.ip().to_string(), addr.port());
    opts.set_keep_alive(Duration::from_secs(30));
    let (client, mut eventloop) = AsyncClient::new(opts, 100);
    let acked = Arc::new(AtomicU64::new(0));
    let failed = Arc::new(Mutex::new(None::<String>));
    let poller = {
        let acked = acked.clone();
        let failed = failed.clone();
        tokio::spawn(async move {
            loop {
                match eventloop.poll().await {
                    Ok(Event::Incoming(RPacket::PubAck(_))) => {
                        acked.fetch_add(1, Ordering::SeqCst);
                    }
                    Ok(_) => {}
                    Err(e) => {
                        *failed.lock().unwrap() = Some(e.to_string());
                        return;
                    }
                }
            }
        })
    };
    let mut sent = 0u64;
    let mut tick = tokio::time::interval(Duration::from_millis(3));
    while !stop.load(Ordering::SeqCst) && sent < max {
        tick.tick().await;
        client
            .publish("good/data", QoS::AtLeastOnce, false, sent.to_string())
            .await
            .map_err(|e| format!("publish {sent}: {e}"))?;
        sent += 1;
    }
    let all_acked = wait_until(Duration::from_secs(30), || {
        acked.load(Ordering::SeqCst) >= sent
    })
    .await;
    let failure = failed.lock().unwrap().clone();
    poller.abort();
    if let Some(e) = failure {
        return Err(format!("good publisher's connection failed: {e}"));
    }
    if !all_acked {
        return Err(format!(
            "only {} of {sent} good publishes were acknowledged",
            acked.load(Ordering::SeqCst)
        ));
    }
    Ok(sent)
}

// ---------------------------------------------------------------------------------------
// The test
// ---------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn hostile_connections_are_closed_and_good_clients_are_untouched() {
    const RECEIVE_MAXIMUM: u16 = 64;
    let node = TestNode::start_with(|cfg| {
        cfg.broker.connect_timeout_secs = CONNECT_TIMEOUT_SECS;
        cfg.broker.max_packet_size = MAX_PACKET;
        cfg.broker.receive_maximum = RECEIVE_MAXIMUM;
    })
    .await;
    let addr = node.mqtt_addr();

    let (_sub_client, received, sub_task) = good_subscriber(addr).await;
    let stop = Arc::new(AtomicBool::new(false));
    let publisher = tokio::spawn(good_publisher(addr, stop.clone(), 20_000));

    let mut cases: JoinSet<(String, CaseResult)> = JoinSet::new();
    macro_rules! case {
        ($name:expr, $fut:expr) => {{
            let name: String = $name.to_string();
            cases.spawn(async move { (name, $fut.await) });
        }};
    }
    for seed in 1..=12u64 {
        case!(
            format!("garbage_before_connect(seed {seed})"),
            garbage_before_connect(addr, seed * 7919)
        );
    }
    for seed in 1..=4u64 {
        case!(
            format!("garbage_after_connect_v311(seed {seed})"),
            garbage_after_connect_v311(addr, seed * 104_729)
        );
        case!(
            format!("garbage_after_connect_v5(seed {seed})"),
            garbage_after_connect_v5(addr, seed * 104_729)
        );
        case!(
            format!("random_after_connect_v5(seed {seed})"),
            random_after_connect_v5(addr, seed * 15_485_863)
        );
    }
    case!(
        "five_byte_remaining_length_first",
        five_byte_remaining_length_first(addr)
    );
    case!(
        "five_byte_remaining_length_v311",
        five_byte_remaining_length_v311(addr)
    );
    case!(
        "five_byte_remaining_length_v5",
        five_byte_remaining_length_v5(addr)
    );
    case!("publish_claiming_200mb_v5", publish_claiming_200mb_v5(addr));
    case!(
        "publish_claiming_200mb_v311",
        publish_claiming_200mb_v311(addr)
    );
    case!("connect_claiming_200mb", connect_claiming_200mb(addr));
    case!("publish_too_large_v5", publish_too_large_v5(addr));
    case!("publish_too_large_v311", publish_too_large_v311(addr));
    case!(
        "truncated_connect_then_silence",
        truncated_connect_then_silence(addr)
    );
    case!("silent_connection", silent_connection(addr));
    case!(
        "truncated_publish_then_silence_v311",
        truncated_publish_then_silence_v311(addr)
    );
    case!(
        "truncated_publish_then_silence_v5",
        truncated_publish_then_silence_v5(addr)
    );
    case!("keep_alive_expiry_v5", keep_alive_expiry_v5(addr));
    case!("ping_before_connect", ping_before_connect(addr));
    case!("subscribe_before_connect", subscribe_before_connect(addr));
    case!("publish_before_connect", publish_before_connect(addr));
    case!(
        "subscribe_reserved_flags_v311",
        subscribe_reserved_flags_v311(addr)
    );
    case!(
        "subscribe_reserved_flags_v5",
        subscribe_reserved_flags_v5(addr)
    );
    case!("pingreq_reserved_flags_v5", pingreq_reserved_flags_v5(addr));
    case!("publish_dup_with_qos0_v5", publish_dup_with_qos0_v5(addr));
    case!(
        "connect_reserved_flag_v311",
        connect_reserved_flag(addr, false)
    );
    case!(
        "connect_reserved_flag_v5",
        connect_reserved_flag(addr, true)
    );
    case!("invalid_utf8_topic_v311", invalid_utf8_topic_v311(addr));
    case!("invalid_utf8_topic_v5", invalid_utf8_topic_v5(addr));
    case!("nul_in_topic_v5", nul_in_topic_v5(addr));
    case!("invalid_utf8_filter_v5", invalid_utf8_filter_v5(addr));
    case!(
        "wildcard_in_publish_topic_v5",
        wildcard_in_publish_topic_v5(addr)
    );
    case!("qos3_v311", qos3_v311(addr));
    case!("qos3_v5", qos3_v5(addr));
    case!("second_connect_v311", second_connect_v311(addr));
    case!("second_connect_v5", second_connect_v5(addr));
    case!(
        "topic_alias_above_maximum_v5",
        topic_alias_out_of_range_v5(addr, 60_000)
    );
    case!("topic_alias_zero_v5", topic_alias_out_of_range_v5(addr, 0));
    case!(
        "receive_maximum_exceeded_v5",
        receive_maximum_exceeded_v5(addr, RECEIVE_MAXIMUM)
    );
    case!("client_id_too_long_v311", client_id_too_long(addr, false));
    case!("client_id_too_long_v5", client_id_too_long(addr, true));
    case!(
        "unsupported_protocol_level",
        unsupported_protocol_level(addr)
    );
    case!("mqtt31_connect", mqtt31_connect(addr));
    case!("wrong_protocol_name", wrong_protocol_name(addr));
    case!("deep_topic_levels", deep_topic_levels(addr));
    case!("slowloris", slowloris(addr));
    case!("connection_storm", connection_storm(addr, 3000, 32));

    let mut results = BTreeMap::new();
    let all = tokio::time::timeout(Duration::from_secs(180), async {
        while let Some(joined) = cases.join_next().await {
            match joined {
                Ok((name, result)) => {
                    results.insert(name, result);
                }
                Err(e) => {
                    results.insert(
                        format!("a case task ({e})"),
                        Err("panicked or was cancelled".to_string()),
                    );
                }
            }
        }
    })
    .await;
    let unfinished = cases.len();
    cases.abort_all();

    stop.store(true, Ordering::SeqCst);
    let sent = publisher.await.expect("publisher task");

    let mut problems: Vec<String> = results
        .iter()
        .filter_map(|(name, r)| r.as_ref().err().map(|e| format!("{name}: {e}")))
        .collect();
    if all.is_err() {
        problems.push(format!(
            "{unfinished} hostile case(s) still running after 180 s"
        ));
    }
    match &sent {
        Err(e) => problems.push(e.clone()),
        Ok(sent) => {
            let sent = *sent;
            let arrived = wait_until(Duration::from_secs(30), || {
                received.lock().unwrap().payloads.len() as u64 >= sent
            })
            .await;
            let r = received.lock().unwrap();
            let mut counts = BTreeMap::<u64, usize>::new();
            for p in &r.payloads {
                *counts.entry(p.parse().unwrap()).or_default() += 1;
            }
            let missing: Vec<u64> = (0..sent)
                .filter(|n| !counts.contains_key(n))
                .take(10)
                .collect();
            let duplicated: Vec<u64> = counts
                .iter()
                .filter(|(_, c)| **c > 1)
                .map(|(n, _)| *n)
                .take(10)
                .collect();
            if !arrived
                || !missing.is_empty()
                || !duplicated.is_empty()
                || r.payloads.len() as u64 != sent
            {
                problems.push(format!(
                    "good subscriber got {} messages for {sent} published; first missing {missing:?}, duplicated {duplicated:?}",
                    r.payloads.len()
                ));
            }
            if !r.foreign.is_empty() {
                problems.push(format!(
                    "hostile messages reached the good subscriber: {:?}",
                    r.foreign
                ));
            }
            if !r.errors.is_empty() {
                problems.push(format!(
                    "the good subscriber lost its connection: {:?}",
                    r.errors
                ));
            }
            eprintln!(
                "good subscriber received {} of {sent} QoS 1 messages during the barrage",
                r.payloads.len()
            );
        }
    }

    // The node still takes new clients of both versions.
    match v311(addr).await {
        Ok(mut c) => {
            let _ = c.send(&raw::disconnect()).await;
        }
        Err(e) => problems.push(format!(
            "after the barrage, a 3.1.1 client could not connect: {e}"
        )),
    }
    match v5(addr).await {
        Ok(mut c) => {
            let _ = c.send(&raw::disconnect()).await;
        }
        Err(e) => problems.push(format!(
            "after the barrage, a 5.0 client could not connect: {e}"
        )),
    }
    sub_task.abort();

    let passed = results.values().filter(|r| r.is_ok()).count();
    eprintln!(
        "hostile cases: {passed} of {} behaved as expected",
        results.len()
    );
    assert!(
        problems.is_empty(),
        "{} problem(s):\n{}",
        problems.len(),
        problems.join("\n")
    );
    node.shutdown().await;
}

/// A PUBLISH over the maximum packet size gets DISCONNECT 0x95; one under it is served.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn packet_too_large_is_refused_with_0x95_and_node_stays_usable() {
    let node = TestNode::start_with(|cfg| cfg.broker.max_packet_size = 4096).await;
    let addr = node.mqtt_addr();
    let conn = v5_keep_alive(addr, 60).await.expect("v5 handshake");
    let bytes = raw::publish(b"big/one", 1, 1, Some(&[]), &vec![b'y'; 5000]);
    let closure = send_expect_close(conn, &bytes, CLOSE_BOUND)
        .await
        .expect("closed");
    expect_disconnect(&closure, &[0x95]).expect("DISCONNECT 0x95");

    // A publish just under the limit still goes through.
    let mut conn = v5_keep_alive(addr, 60).await.expect("v5 handshake");
    conn.send(&raw::publish(
        b"big/two",
        1,
        1,
        Some(&[]),
        &vec![b'y'; 3000],
    ))
    .await
    .expect("send");
    let ack = conn.recv(Duration::from_secs(10)).await.expect("PUBACK");
    assert_eq!(ack.kind(), raw::PUBACK, "want PUBACK, got {ack}");
    let _ = conn.send(&raw::disconnect()).await;
    let closure = expect_close(conn, CLOSE_BOUND)
        .await
        .expect("closed after DISCONNECT");
    assert!(matches!(closure.end, End::Closed | End::Error(_)));
    node.shutdown().await;
}
