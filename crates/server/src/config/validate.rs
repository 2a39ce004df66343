//! Rules a well-typed configuration must still follow. Each failure names its key.

use std::collections::HashSet;

use tern_cluster::transport::TransportError;

use super::Config;

/// The smallest packet limit that still lets a client connect (a CONNECT with a short
/// client id needs a dozen bytes or more).
const MIN_PACKET_SIZE: u32 = 16;
/// MQTT 3.1.1 requires a server to accept client ids of 1 to 23 bytes.
const MIN_CLIENT_ID_LEN: usize = 23;
/// A broker gains nothing from more runtime threads than cores; a far larger number is a
/// typo that would start thousands of threads.
const MAX_WORKER_THREADS: usize = 1024;

type Failure = (String, String);

fn fail(key: &str, reason: impl Into<String>) -> Result<(), Failure> {
    Err((key.to_string(), reason.into()))
}

pub(super) fn validate(config: &Config) -> Result<(), Failure> {
    let broker = &config.broker;
    if broker.maximum_qos > 2 {
        return fail(
            "broker.maximum_qos",
            format!("{} is not a QoS level; use 0, 1 or 2", broker.maximum_qos),
        );
    }
    if broker.receive_maximum == 0 {
        return fail(
            "broker.receive_maximum",
            "must be at least 1 (MQTT forbids 0)",
        );
    }
    if broker.max_inflight == 0 {
        return fail("broker.max_inflight", "must be at least 1");
    }
    if broker.max_packet_size < MIN_PACKET_SIZE {
        return fail(
            "broker.max_packet_size",
            format!(
                "{} bytes is too small for any CONNECT; use at least {MIN_PACKET_SIZE}",
                broker.max_packet_size
            ),
        );
    }
    if broker.max_client_id_len < MIN_CLIENT_ID_LEN {
        return fail(
            "broker.max_client_id_len",
            format!("must be at least {MIN_CLIENT_ID_LEN} (MQTT requires servers to accept client ids that long)"),
        );
    }
    if broker.connect_timeout_secs == 0 {
        return fail("broker.connect_timeout_secs", "must be at least 1 second");
    }

    if config.mqtt.max_connections == 0 {
        return fail("mqtt.max_connections", "must be at least 1");
    }
    if config.node.data_dir.as_os_str().is_empty() {
        return fail("node.data_dir", "must not be empty");
    }
    if config.node.worker_threads > MAX_WORKER_THREADS {
        return fail(
            "node.worker_threads",
            format!("must be at most {MAX_WORKER_THREADS} (0: one per core)"),
        );
    }
    if let Err(e) = tracing_subscriber::EnvFilter::try_new(&config.log.level) {
        return fail(
            "log.level",
            format!(
                "`{}` is not a log filter ({e}); try `info` or `info,tern_broker=debug`",
                config.log.level
            ),
        );
    }

    let mut names = HashSet::new();
    for (i, user) in config.auth.users.iter().enumerate() {
        if user.username.is_empty() {
            return fail(&format!("auth.users[{i}].username"), "must not be empty");
        }
        if !names.insert(user.username.as_str()) {
            return fail(
                &format!("auth.users[{i}].username"),
                format!("user `{}` is listed twice", user.username),
            );
        }
        // A PHC string starts with `$<algorithm>$`; anything else is most likely a plain
        // password pasted by mistake, which must never be accepted.
        if !user.password_hash.starts_with('$') || user.password_hash.len() < 16 {
            return fail(
                &format!("auth.users[{i}].password_hash"),
                "is not a password hash (a PHC string such as `$argon2id$v=19$...`); make one with `tern passwd`",
            );
        }
    }
    for (i, rule) in config.auth.acl.iter().enumerate() {
        if rule.topic.is_empty() {
            return fail(&format!("auth.acl[{i}].topic"), "must not be empty");
        }
    }
    validate_cluster(config)
}

/// `[cluster]`: the cluster crate's own checks (its messages start with the key), and the
/// transport settings' (their messages start with the key below `cluster.transport`).
fn validate_cluster(config: &Config) -> Result<(), Failure> {
    let cluster = &config.cluster;
    if !cluster.enabled {
        return Ok(());
    }
    if let Err(message) = cluster.validate() {
        return Err(split_key(&message, "cluster"));
    }
    if let Err(e) = cluster.transport.to_quinn().map(drop) {
        // A config error reads "<key>: <reason>", the key relative to `cluster.transport`.
        let failure = match &e {
            TransportError::Config(message) => match message.split_once(": ") {
                Some((key, reason)) if is_key_word(key) => {
                    (format!("cluster.transport.{key}"), reason.to_string())
                }
                _ => ("cluster.transport".to_string(), message.clone()),
            },
            other => ("cluster.transport".to_string(), other.to_string()),
        };
        return Err(failure);
    }
    Ok(())
}

fn is_key_word(word: &str) -> bool {
    !word.is_empty()
        && word
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
}

/// `"cluster.voters must be ..."` gives `("cluster.voters", "must be ...")`; a message
/// not led by a key is about the whole `section`.
fn split_key(message: &str, section: &str) -> Failure {
    let lead = message.split([' ', ':']).next().unwrap_or("");
    let is_key = lead.starts_with(&format!("{section}."))
        && lead
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || "_.".contains(c));
    if is_key {
        let reason = message[lead.len()..].trim_start_matches(':').trim();
        (lead.to_string(), reason.to_string())
    } else {
        (section.to_string(), message.to_string())
    }
}
