//! Settings of one node's MQTT broker. The server crate reads them from TOML, `TERN_`
//! environment variables and flags; every field has a default so an empty file works.

use serde::{Deserialize, Serialize};

#[derive(Clone, Debug, PartialEq, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct BrokerConfig {
    /// Largest packet accepted from a client, in bytes (announced to v5 clients).
    pub max_packet_size: u32,
    /// Largest keep-alive a client may ask for, in seconds; a larger (or zero) request is
    /// replaced by this and announced to v5 clients as Server Keep Alive. 0 = no limit.
    pub max_keep_alive: u16,
    /// How many unacknowledged QoS 1/2 publishes a client may send us at once (v5 Receive
    /// Maximum). Exceeding it closes the connection with 0x93.
    pub receive_maximum: u16,
    /// Upper bound on unacknowledged QoS 1/2 publishes we send a client at once; a v5
    /// client's smaller Receive Maximum wins.
    pub max_inflight: u16,
    /// Messages queued per session (online and offline) beyond the in-flight window.
    /// When full, the oldest QoS 0 message is dropped first, then the new message.
    pub max_queued_messages: usize,
    /// Topic aliases a v5 client may use towards us.
    pub topic_alias_maximum: u16,
    /// Cap on a v5 client's Session Expiry Interval, in seconds.
    pub max_session_expiry_interval: u32,
    /// Session expiry for 3.1.1 persistent sessions (clean session = 0), in seconds.
    /// 3.1.1 has no expiry of its own; u32::MAX keeps them until the client returns.
    pub v311_session_expiry_interval: u32,
    /// Highest QoS granted (0, 1 or 2).
    pub maximum_qos: u8,
    pub retain_available: bool,
    pub wildcard_subscriptions: bool,
    pub shared_subscriptions: bool,
    pub subscription_identifiers: bool,
    /// Longest client identifier accepted, in bytes.
    pub max_client_id_len: usize,
    /// Seconds a new connection has to send CONNECT before it is closed.
    pub connect_timeout_secs: u64,
    /// How often `$SYS/` statistics are published, in seconds; 0 turns them off.
    pub sys_interval_secs: u64,
    /// Response Information returned to a v5 client that requests it; `{client_id}` is
    /// replaced by the client's identifier. Empty = not offered.
    pub response_information: String,
}

impl Default for BrokerConfig {
    fn default() -> Self {
        Self {
            max_packet_size: 1024 * 1024,
            max_keep_alive: 3600,
            receive_maximum: 1024,
            max_inflight: 128,
            max_queued_messages: 10_000,
            topic_alias_maximum: 64,
            max_session_expiry_interval: u32::MAX,
            v311_session_expiry_interval: u32::MAX,
            maximum_qos: 2,
            retain_available: true,
            wildcard_subscriptions: true,
            shared_subscriptions: true,
            subscription_identifiers: true,
            max_client_id_len: 256,
            connect_timeout_secs: 10,
            sys_interval_secs: 10,
            response_information: "response/{client_id}".to_string(),
        }
    }
}

/// Who may connect and what they may do.
#[derive(Clone, Debug, PartialEq, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct AuthConfig {
    /// Accept clients that send no user name. On in the embedded defaults so that
    /// `tern serve` works at once; switch it off in production.
    pub allow_anonymous: bool,
    /// Users with salted password hashes (PHC strings, argon2id; `tern passwd` makes them).
    pub users: Vec<UserEntry>,
    /// ACL rules, checked in order; the first rule whose user/client and topic match decides.
    pub acl: Vec<AclRule>,
    /// What happens when no ACL rule matches.
    pub acl_default: AclDecision,
}

impl Default for AuthConfig {
    fn default() -> Self {
        Self {
            allow_anonymous: true,
            users: Vec::new(),
            acl: Vec::new(),
            acl_default: AclDecision::Allow,
        }
    }
}

#[derive(Clone, Debug, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct UserEntry {
    pub username: String,
    /// A PHC string such as `$argon2id$v=19$m=19456,t=2,p=1$...`; never a plain password.
    pub password_hash: String,
}

#[derive(Clone, Debug, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct AclRule {
    /// The rule applies to this user name only (absent: any user, anonymous included).
    #[serde(default)]
    pub username: Option<String>,
    /// The rule applies to this client id only (absent: any client).
    #[serde(default)]
    pub client_id: Option<String>,
    /// Topic filter, with `+`/`#` wildcards and `%u` (user name) / `%c` (client id).
    pub topic: String,
    /// Which operations it covers.
    pub access: AclAccess,
    /// allow or deny.
    pub decision: AclDecision,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum AclAccess {
    Publish,
    Subscribe,
    /// Both publish and subscribe.
    All,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum AclDecision {
    Allow,
    Deny,
}
