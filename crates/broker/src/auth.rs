//! Who may connect ([`Authenticator`]) and what they may publish and subscribe to
//! ([`Acl`]), both built once from [`AuthConfig`] and immutable afterwards, so the broker
//! can share them behind an `Arc` without locks.

use std::borrow::Cow;
use std::collections::HashMap;

use argon2::password_hash::rand_core::OsRng;
use argon2::password_hash::{
    PasswordHash, PasswordHashString, PasswordHasher, PasswordVerifier, SaltString,
};
use argon2::{Algorithm, Argon2, Params, Version};

use crate::config::{AclAccess, AclDecision, AclRule, AuthConfig};
use crate::topic::{
    filter_covers, filters_overlap, matches, parse_shared, validate_topic_filter, TopicError,
};

/// A configuration error in the `auth` section. Messages name the user or the rule, and
/// never repeat a password hash (which might be a pasted plain-text password).
#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    #[error(
        "auth.users: user {username:?}: password_hash is not a PHC string (it looks like a \
         plain-text password); make one with `tern passwd`"
    )]
    PlainTextPassword { username: String },
    #[error("auth.users: user {username:?}: invalid password_hash: {reason}")]
    BadPasswordHash { username: String, reason: String },
    #[error("auth.users: user {username:?} is listed more than once")]
    DuplicateUser { username: String },
    #[error("auth.acl[{index}]: invalid topic {topic:?}: {source}")]
    BadAclTopic {
        index: usize,
        topic: String,
        source: TopicError,
    },
}

/// Hashes a password for the `users` list: an argon2id PHC string
/// (`$argon2id$v=19$m=19456,t=2,p=1$<salt>$<hash>`) with the argon2 crate's default
/// parameters and a fresh random salt from the OS.
///
/// Deliberately slow (tens of milliseconds); see [`Authenticator::authenticate`].
///
/// # Panics
/// Only if `password` is longer than 4 GiB, argon2's limit.
pub fn hash_password(password: &str) -> String {
    let salt = SaltString::generate(&mut OsRng);
    Argon2::default()
        .hash_password(password.as_bytes(), &salt)
        .expect("argon2 with default parameters accepts any password up to 4 GiB")
        .to_string()
}

/// The result of [`Authenticator::authenticate`], mapped by the broker onto CONNACK codes
/// (v5: 0x86 Bad User Name or Password / 0x87 Not Authorized; 3.1.1: 4 / 5).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AuthOutcome {
    Allowed,
    /// Unknown user name, wrong or missing password.
    BadCredentials,
    /// No user name, and anonymous clients are not allowed.
    NotAuthorized,
}

/// Checks user names and passwords against the configured argon2 hashes.
pub struct Authenticator {
    allow_anonymous: bool,
    users: HashMap<String, PasswordHashString>,
}

impl std::fmt::Debug for Authenticator {
    /// Leaves the hashes out of logs.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Authenticator")
            .field("allow_anonymous", &self.allow_anonymous)
            .field("users", &self.users.len())
            .finish()
    }
}

impl Authenticator {
    /// Parses and checks every user's hash up front, so a typo fails at startup rather
    /// than as a mysterious login failure.
    pub fn new(config: &AuthConfig) -> Result<Self, AuthError> {
        let mut users = HashMap::with_capacity(config.users.len());
        for user in &config.users {
            let hash = parse_hash(&user.username, &user.password_hash)?;
            if users.insert(user.username.clone(), hash).is_some() {
                return Err(AuthError::DuplicateUser {
                    username: user.username.clone(),
                });
            }
        }
        Ok(Self {
            allow_anonymous: config.allow_anonymous,
            users,
        })
    }

    /// Decides whether a CONNECT's credentials are accepted:
    ///
    /// - no user name: [`AuthOutcome::Allowed`] if anonymous clients are allowed, else
    ///   [`AuthOutcome::NotAuthorized`] (any password is ignored);
    /// - a configured user name: `Allowed` only with the right password, else
    ///   `BadCredentials`;
    /// - an unknown user name: `BadCredentials`, except when no users are configured at
    ///   all and anonymous clients are allowed. Then every user name is accepted without a
    ///   password check, because a node with no users knows no names to check against and
    ///   many clients send a user name regardless; this is what lets `tern serve` on its
    ///   embedded defaults work with any client.
    ///
    /// Passwords are verified with argon2's constant-time comparison, and an unknown user
    /// name costs one argon2 hash too (against another user's hash), so response times do
    /// not reveal which user names exist.
    ///
    /// Argon2 is deliberately slow (tens of milliseconds of CPU): call this from
    /// `tokio::task::spawn_blocking`, never directly on an async worker thread.
    pub fn authenticate(&self, username: Option<&str>, password: Option<&[u8]>) -> AuthOutcome {
        let Some(username) = username else {
            return if self.allow_anonymous {
                AuthOutcome::Allowed
            } else {
                AuthOutcome::NotAuthorized
            };
        };
        if self.users.is_empty() && self.allow_anonymous {
            return AuthOutcome::Allowed;
        }
        let Some(password) = password else {
            return AuthOutcome::BadCredentials;
        };
        match self.users.get(username) {
            Some(hash) if verify(hash, password) => AuthOutcome::Allowed,
            Some(_) => AuthOutcome::BadCredentials,
            None => {
                // Spend the same time as for a real user; the answer is no either way.
                if let Some(hash) = self.users.values().next() {
                    let _ = verify(hash, password);
                }
                AuthOutcome::BadCredentials
            }
        }
    }

    pub fn allow_anonymous(&self) -> bool {
        self.allow_anonymous
    }

    /// Number of configured users.
    pub fn user_count(&self) -> usize {
        self.users.len()
    }
}

fn verify(hash: &PasswordHashString, password: &[u8]) -> bool {
    // The hash carries its own algorithm, version and parameters; `Argon2::default()`
    // only supplies the implementation.
    Argon2::default()
        .verify_password(password, &hash.password_hash())
        .is_ok()
}

/// Parses a configured hash and checks that argon2 can verify against it.
fn parse_hash(username: &str, value: &str) -> Result<PasswordHashString, AuthError> {
    if !value.starts_with('$') {
        return Err(AuthError::PlainTextPassword {
            username: username.to_string(),
        });
    }
    let bad = |reason: String| AuthError::BadPasswordHash {
        username: username.to_string(),
        reason,
    };
    let hash = PasswordHash::new(value).map_err(|e| bad(e.to_string()))?;
    Algorithm::try_from(hash.algorithm).map_err(|_| {
        bad(format!(
            "algorithm {} is not argon2 (use argon2id)",
            hash.algorithm
        ))
    })?;
    if let Some(v) = hash.version {
        Version::try_from(v).map_err(|e| bad(format!("version: {e}")))?;
    }
    Params::try_from(&hash).map_err(|e| bad(format!("parameters: {e}")))?;
    if hash.salt.is_none() || hash.hash.is_none() {
        return Err(bad("salt or hash missing".to_string()));
    }
    Ok(hash.serialize())
}

/// A compiled [`AclRule`].
struct Rule {
    username: Option<String>,
    client_id: Option<String>,
    topic: String,
    /// The topic contains `%u` or `%c`, so it must be substituted per client. Rules
    /// without (the common case) match with no allocation.
    substitutes: bool,
    publish: bool,
    subscribe: bool,
    allow: bool,
}

impl Rule {
    fn applies_to(&self, username: Option<&str>, client_id: &str) -> bool {
        let user_ok = match &self.username {
            Some(u) => username == Some(u.as_str()),
            None => true,
        };
        let client_ok = match &self.client_id {
            Some(c) => c == client_id,
            None => true,
        };
        user_ok && client_ok
    }
}

/// Why a rule's `%u`/`%c` could not be substituted.
enum SubstError {
    /// `%u` and the client sent no user name: the rule is about named users only.
    Anonymous,
    /// The user name or client id is empty, contains `+`, `#`, `/` or U+0000, or would
    /// turn the pattern into a `$` topic: substituting it would change the pattern's
    /// shape rather than name one client's topics.
    Unsafe,
}

/// Replaces `%u` and `%c` in `pattern` in one pass (so a user name that itself contains
/// `%c` is not substituted again).
fn substitute(
    pattern: &str,
    username: Option<&str>,
    client_id: &str,
) -> Result<String, SubstError> {
    let safe = |v: &str| !v.is_empty() && !v.contains(['+', '#', '/', '\0']);
    let mut out = String::with_capacity(pattern.len() + 32);
    let mut rest = pattern;
    while let Some(i) = rest.find('%') {
        out.push_str(&rest[..i]);
        let after = &rest[i + 1..];
        let value = match after.as_bytes().first() {
            Some(b'u') => Some(username.ok_or(SubstError::Anonymous)?),
            Some(b'c') => Some(client_id),
            _ => None,
        };
        match value {
            Some(v) if safe(v) => {
                out.push_str(v);
                rest = &after[1..];
            }
            Some(_) => return Err(SubstError::Unsafe),
            None => {
                out.push('%');
                rest = after;
            }
        }
    }
    out.push_str(rest);
    if out.starts_with('$') && !pattern.starts_with('$') {
        return Err(SubstError::Unsafe);
    }
    Ok(out)
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Op {
    Publish,
    Subscribe,
}

/// The access control list: ordered rules, first applicable match decides, else
/// `acl_default`.
///
/// A rule applies to a client when its `username` and `client_id` (if set) equal the
/// client's, and its `access` includes the operation. In its topic, `%u` stands for the
/// user name and `%c` for the client id:
///
/// - a rule using `%u` does not apply to anonymous clients;
/// - a user name or client id that is empty or contains `+`, `#`, `/` (or would make the
///   pattern start with `$`) would widen the pattern, so it is never substituted: an
///   allow rule then does not match, and a deny rule denies (fail closed: a crafted
///   client id can never make the ACL more permissive).
///
/// PUBLISH: the first applicable rule whose pattern matches the topic decides.
///
/// SUBSCRIBE (for `$share/{group}/{filter}` the inner filter is checked): a subscription
/// is allowed only if every topic it could receive is allowed. So an allow rule decides
/// when its pattern covers the whole filter ([`filter_covers`]), and a deny rule decides
/// as soon as its pattern overlaps the filter at all ([`filters_overlap`]): with
/// `deny secret/#` before `allow #`, subscribing to `#` is refused rather than leaking
/// `secret/...`. An allow rule that covers only part of the filter does not decide; the
/// later rules or the default do. The result errs on the side of refusing.
///
/// Topic matching follows MQTT, `$` rule included: a rule `#` does not match `$SYS/...`.
#[derive(Default)]
pub struct Acl {
    rules: Vec<Rule>,
    default_allow: bool,
}

impl std::fmt::Debug for Acl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Acl")
            .field("rules", &self.rules.len())
            .field("default_allow", &self.default_allow)
            .finish()
    }
}

impl Acl {
    /// Compiles the rules, checking each topic pattern (with `%u`/`%c` standing for a
    /// level's worth of text) as a topic filter.
    pub fn new(config: &AuthConfig) -> Result<Self, AuthError> {
        let rules = config
            .acl
            .iter()
            .enumerate()
            .map(|(index, rule)| compile(index, rule))
            .collect::<Result<_, _>>()?;
        Ok(Self {
            rules,
            default_allow: config.acl_default == AclDecision::Allow,
        })
    }

    /// True when there are no rules and the default allows: the broker can skip checks.
    pub fn allows_everything(&self) -> bool {
        self.rules.is_empty() && self.default_allow
    }

    /// May this client publish to `topic` (a valid topic name)?
    pub fn check_publish(&self, username: Option<&str>, client_id: &str, topic: &str) -> bool {
        self.check(Op::Publish, username, client_id, topic)
    }

    /// May this client subscribe to `filter` (a valid filter, possibly `$share/...`)? An
    /// invalid shared filter is refused.
    pub fn check_subscribe(&self, username: Option<&str>, client_id: &str, filter: &str) -> bool {
        match parse_shared(filter) {
            Ok(Some(shared)) => self.check(Op::Subscribe, username, client_id, shared.filter),
            Ok(None) => self.check(Op::Subscribe, username, client_id, filter),
            Err(_) => false,
        }
    }

    fn check(&self, op: Op, username: Option<&str>, client_id: &str, target: &str) -> bool {
        for rule in &self.rules {
            let covers_op = match op {
                Op::Publish => rule.publish,
                Op::Subscribe => rule.subscribe,
            };
            if !covers_op || !rule.applies_to(username, client_id) {
                continue;
            }
            let pattern = if rule.substitutes {
                match substitute(&rule.topic, username, client_id) {
                    Ok(p) => Cow::Owned(p),
                    Err(SubstError::Anonymous) => continue,
                    Err(SubstError::Unsafe) if rule.allow => continue,
                    Err(SubstError::Unsafe) => return false,
                }
            } else {
                Cow::Borrowed(rule.topic.as_str())
            };
            let decides = match (op, rule.allow) {
                (Op::Publish, _) => matches(&pattern, target),
                (Op::Subscribe, true) => filter_covers(&pattern, target),
                (Op::Subscribe, false) => filters_overlap(&pattern, target),
            };
            if decides {
                return rule.allow;
            }
        }
        self.default_allow
    }
}

fn compile(index: usize, rule: &AclRule) -> Result<Rule, AuthError> {
    let substitutes = rule.topic.contains("%u") || rule.topic.contains("%c");
    let check = if substitutes {
        Cow::Owned(rule.topic.replace("%u", "x").replace("%c", "x"))
    } else {
        Cow::Borrowed(rule.topic.as_str())
    };
    validate_topic_filter(&check).map_err(|source| AuthError::BadAclTopic {
        index,
        topic: rule.topic.clone(),
        source,
    })?;
    Ok(Rule {
        username: rule.username.clone(),
        client_id: rule.client_id.clone(),
        topic: rule.topic.clone(),
        substitutes,
        publish: matches!(rule.access, AclAccess::Publish | AclAccess::All),
        subscribe: matches!(rule.access, AclAccess::Subscribe | AclAccess::All),
        allow: rule.decision == AclDecision::Allow,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::UserEntry;

    /// A real argon2id hash with tiny parameters, so tests do not spend seconds hashing.
    fn cheap_hash(password: &str) -> String {
        let params = Params::new(8, 1, 1, None).expect("valid test parameters");
        let argon = Argon2::new(Algorithm::Argon2id, Version::V0x13, params);
        let salt = SaltString::generate(&mut OsRng);
        argon
            .hash_password(password.as_bytes(), &salt)
            .expect("hashing works")
            .to_string()
    }

    fn config(allow_anonymous: bool, users: &[(&str, &str)]) -> AuthConfig {
        AuthConfig {
            allow_anonymous,
            users: users
                .iter()
                .map(|(u, p)| UserEntry {
                    username: u.to_string(),
                    password_hash: cheap_hash(p),
                })
                .collect(),
            ..AuthConfig::default()
        }
    }

    #[test]
    fn hash_password_makes_verifiable_argon2id() {
        let phc = hash_password("s3cret");
        assert!(phc.starts_with("$argon2id$v=19$"), "{phc}");
        assert_ne!(phc, hash_password("s3cret"), "salts differ");
        let cfg = AuthConfig {
            allow_anonymous: false,
            users: vec![UserEntry {
                username: "u".into(),
                password_hash: phc,
            }],
            ..AuthConfig::default()
        };
        let auth = Authenticator::new(&cfg).expect("valid hash");
        assert_eq!(
            auth.authenticate(Some("u"), Some(b"s3cret")),
            AuthOutcome::Allowed
        );
        assert_eq!(
            auth.authenticate(Some("u"), Some(b"S3cret")),
            AuthOutcome::BadCredentials
        );
    }

    #[test]
    fn users_and_passwords() {
        let auth = Authenticator::new(&config(false, &[("alice", "pw-a"), ("bob", "pw-b")]))
            .expect("valid");
        assert_eq!(
            auth.authenticate(Some("alice"), Some(b"pw-a")),
            AuthOutcome::Allowed
        );
        assert_eq!(
            auth.authenticate(Some("bob"), Some(b"pw-b")),
            AuthOutcome::Allowed
        );
        assert_eq!(
            auth.authenticate(Some("alice"), Some(b"pw-b")),
            AuthOutcome::BadCredentials
        );
        assert_eq!(
            auth.authenticate(Some("alice"), None),
            AuthOutcome::BadCredentials
        );
        assert_eq!(
            auth.authenticate(Some("carol"), Some(b"pw-a")),
            AuthOutcome::BadCredentials
        );
        assert_eq!(auth.authenticate(None, None), AuthOutcome::NotAuthorized);
        assert_eq!(
            auth.authenticate(None, Some(b"pw-a")),
            AuthOutcome::NotAuthorized
        );
    }

    #[test]
    fn anonymous_rules() {
        // Users configured, anonymous allowed: no name is fine, unknown names are not.
        let auth = Authenticator::new(&config(true, &[("alice", "pw")])).expect("valid");
        assert_eq!(auth.authenticate(None, None), AuthOutcome::Allowed);
        assert_eq!(
            auth.authenticate(Some("mallory"), Some(b"pw")),
            AuthOutcome::BadCredentials
        );
        assert_eq!(
            auth.authenticate(Some("alice"), Some(b"nope")),
            AuthOutcome::BadCredentials
        );

        // No users and anonymous allowed (the embedded default): any name is accepted.
        let open = Authenticator::new(&AuthConfig::default()).expect("valid");
        assert_eq!(open.authenticate(None, None), AuthOutcome::Allowed);
        assert_eq!(
            open.authenticate(Some("anyone"), None),
            AuthOutcome::Allowed
        );
        assert_eq!(
            open.authenticate(Some("anyone"), Some(b"x")),
            AuthOutcome::Allowed
        );

        // No users and no anonymous: nobody gets in.
        let closed = Authenticator::new(&config(false, &[])).expect("valid");
        assert_eq!(closed.authenticate(None, None), AuthOutcome::NotAuthorized);
        assert_eq!(
            closed.authenticate(Some("anyone"), Some(b"x")),
            AuthOutcome::BadCredentials
        );
    }

    #[test]
    fn bad_configs_are_refused_by_name() {
        let with = |hash: &str| AuthConfig {
            users: vec![UserEntry {
                username: "alice".into(),
                password_hash: hash.into(),
            }],
            ..AuthConfig::default()
        };
        let err = Authenticator::new(&with("hunter2")).expect_err("plain text");
        assert!(matches!(&err, AuthError::PlainTextPassword { username } if username == "alice"));
        assert!(!err.to_string().contains("hunter2"));
        for bad in [
            "$argon2id$v=19$m=19456",
            "$",
            "$argon2id$v=19$m=19456,t=2,p=1$!!$!!",
            "$pbkdf2-sha256$i=1000$c2FsdA$aGFzaA",
        ] {
            let err = Authenticator::new(&with(bad)).expect_err(bad);
            assert!(
                matches!(&err, AuthError::BadPasswordHash { username, .. } if username == "alice"),
                "{bad}: {err}"
            );
        }
        let mut dup = config(false, &[("alice", "a"), ("alice", "b")]);
        let err = Authenticator::new(&dup).expect_err("duplicate");
        assert!(matches!(&err, AuthError::DuplicateUser { username } if username == "alice"));
        dup.users.pop();
        assert!(Authenticator::new(&dup).is_ok());
    }

    fn rule(topic: &str, access: AclAccess, decision: AclDecision) -> AclRule {
        AclRule {
            username: None,
            client_id: None,
            topic: topic.into(),
            access,
            decision,
        }
    }

    fn acl(rules: Vec<AclRule>, default: AclDecision) -> Acl {
        Acl::new(&AuthConfig {
            acl: rules,
            acl_default: default,
            ..AuthConfig::default()
        })
        .expect("valid acl")
    }

    use AclAccess::{All, Publish, Subscribe};
    use AclDecision::{Allow, Deny};

    #[test]
    fn empty_acl_uses_default() {
        assert!(acl(vec![], Allow).allows_everything());
        assert!(acl(vec![], Allow).check_publish(None, "c", "a/b"));
        assert!(!acl(vec![], Deny).check_publish(None, "c", "a/b"));
        assert!(!acl(vec![], Deny).check_subscribe(None, "c", "#"));
    }

    #[test]
    fn first_matching_rule_decides() {
        let a = acl(
            vec![rule("a/secret", All, Deny), rule("a/#", All, Allow)],
            Deny,
        );
        assert!(a.check_publish(None, "c", "a/b"));
        assert!(a.check_publish(None, "c", "a"));
        assert!(!a.check_publish(None, "c", "a/secret"));
        assert!(!a.check_publish(None, "c", "b"));
        assert!(a.check_subscribe(None, "c", "a/b/+"));
        assert!(!a.check_subscribe(None, "c", "a/secret"));
        // `a/+` could receive `a/secret`.
        assert!(!a.check_subscribe(None, "c", "a/+"));
        assert!(!a.check_subscribe(None, "c", "#"));
    }

    #[test]
    fn access_kinds() {
        let a = acl(
            vec![rule("p/#", Publish, Allow), rule("s/#", Subscribe, Allow)],
            Deny,
        );
        assert!(a.check_publish(None, "c", "p/x"));
        assert!(!a.check_subscribe(None, "c", "p/x"));
        assert!(a.check_subscribe(None, "c", "s/x"));
        assert!(!a.check_publish(None, "c", "s/x"));
    }

    #[test]
    fn subscribe_coverage() {
        let a = acl(vec![rule("sensors/+/#", Subscribe, Allow)], Deny);
        assert!(a.check_subscribe(None, "c", "sensors/a/b/+"));
        assert!(a.check_subscribe(None, "c", "sensors/+/x"));
        assert!(!a.check_subscribe(None, "c", "sensors/#"));
        assert!(!a.check_subscribe(None, "c", "#"));
        let b = acl(vec![rule("a/+", Subscribe, Allow)], Deny);
        assert!(!b.check_subscribe(None, "c", "a/#"));
        // Shared subscriptions are checked by their inner filter.
        assert!(a.check_subscribe(None, "c", "$share/g/sensors/x/y"));
        assert!(!a.check_subscribe(None, "c", "$share/g/other"));
        assert!(!a.check_subscribe(None, "c", "$share/+/sensors/x"));
    }

    #[test]
    fn deny_rules_block_overlapping_subscriptions() {
        let sys = acl(vec![rule("$SYS/#", All, Deny)], Allow);
        assert!(
            sys.check_subscribe(None, "c", "#"),
            "`#` cannot receive $SYS topics"
        );
        assert!(sys.check_subscribe(None, "c", "+/load"));
        assert!(!sys.check_subscribe(None, "c", "$SYS/+"));
        let a = acl(
            vec![rule("$SYS/#", All, Deny), rule("secret/#", Subscribe, Deny)],
            Allow,
        );
        assert!(
            !a.check_subscribe(None, "c", "#"),
            "`#` could receive secret/x"
        );
        assert!(
            !a.check_subscribe(None, "c", "+/x"),
            "`+/x` could receive secret/x"
        );
        assert!(a.check_subscribe(None, "c", "public/#"));
        assert!(
            a.check_publish(None, "c", "secret/x"),
            "the deny is for subscribe only"
        );
    }

    #[test]
    fn username_and_client_id_rules() {
        let mut admin = rule("#", All, Allow);
        admin.username = Some("admin".into());
        let mut dev = rule("devices/7/#", Publish, Allow);
        dev.client_id = Some("dev-7".into());
        let a = acl(vec![admin, dev], Deny);
        assert!(a.check_publish(Some("admin"), "x", "any/thing"));
        assert!(a.check_subscribe(Some("admin"), "x", "#"));
        assert!(!a.check_publish(Some("bob"), "x", "any/thing"));
        assert!(!a.check_publish(None, "x", "any/thing"));
        assert!(a.check_publish(None, "dev-7", "devices/7/t"));
        assert!(a.check_publish(Some("bob"), "dev-7", "devices/7/t"));
        assert!(!a.check_publish(None, "dev-8", "devices/7/t"));
    }

    #[test]
    fn substitutions() {
        let a = acl(
            vec![
                rule("users/%u/#", All, Allow),
                rule("clients/%c/+", All, Allow),
                rule("x/%u-%c", Publish, Allow),
            ],
            Deny,
        );
        assert!(a.check_publish(Some("bob"), "c1", "users/bob/inbox"));
        assert!(a.check_subscribe(Some("bob"), "c1", "users/bob/#"));
        assert!(!a.check_publish(Some("bob"), "c1", "users/alice/inbox"));
        assert!(!a.check_subscribe(Some("bob"), "c1", "users/+/inbox"));
        assert!(a.check_publish(Some("bob"), "c1", "clients/c1/t"));
        assert!(!a.check_publish(Some("bob"), "c1", "clients/c2/t"));
        assert!(a.check_publish(Some("bob"), "c1", "x/bob-c1"));
        // %u rules do not apply to anonymous clients; %c rules do.
        assert!(!a.check_publish(None, "c1", "users//inbox"));
        assert!(a.check_publish(None, "c1", "clients/c1/t"));
        assert!(!a.check_publish(None, "c1", "x/-c1"));
        // A name that contains `%c` is inserted as it is, not substituted again.
        assert!(a.check_publish(Some("%c"), "c1", "users/%c/t"));
        assert!(!a.check_publish(Some("%c"), "c1", "users/c1/t"));
        // Unrelated `%` stays literal.
        let b = acl(vec![rule("p/100%/%x", Publish, Allow)], Deny);
        assert!(b.check_publish(None, "c", "p/100%/%x"));
    }

    #[test]
    fn substitution_cannot_widen_a_pattern() {
        let a = acl(
            vec![
                rule("users/%u/#", All, Allow),
                rule("clients/%c/data", All, Allow),
                rule("%c/#", Subscribe, Allow),
            ],
            Deny,
        );
        // Wildcards or slashes in the name would reach other users' topics.
        assert!(!a.check_subscribe(Some("+"), "c", "users/+/#"));
        assert!(!a.check_subscribe(Some("#"), "c", "users/#"));
        assert!(!a.check_publish(Some("bob/.."), "c", "users/bob/../x"));
        assert!(!a.check_publish(Some("alice/x"), "c", "users/alice/x/y"));
        assert!(!a.check_subscribe(None, "+", "clients/+/data"));
        assert!(!a.check_subscribe(None, "a/b", "clients/a/b/data"));
        assert!(!a.check_subscribe(None, "#", "#"));
        assert!(!a.check_subscribe(Some(""), "c", "users//x"));
        // A client id of `$SYS` would turn `%c/#` into `$SYS/#`.
        assert!(!a.check_subscribe(None, "$SYS", "$SYS/#"));
        assert!(a.check_subscribe(None, "c7", "c7/#"));

        // A deny rule that cannot be substituted safely denies (fail closed).
        let d = acl(vec![rule("clients/%c/config", Publish, Deny)], Allow);
        assert!(!d.check_publish(None, "c1", "clients/c1/config"));
        assert!(d.check_publish(None, "c1", "clients/c2/config"));
        assert!(!d.check_publish(None, "+", "anything"));
        assert!(!d.check_publish(None, "a/b", "anything"));
        // ...but a %u deny rule still does not apply to anonymous clients.
        let e = acl(vec![rule("users/%u/ro", Publish, Deny)], Allow);
        assert!(e.check_publish(None, "c", "users/x/ro"));
        assert!(!e.check_publish(Some("x"), "c", "users/x/ro"));
    }

    #[test]
    fn invalid_acl_topics_are_refused() {
        let err = Acl::new(&AuthConfig {
            acl: vec![rule("a", All, Allow), rule("a/#/b", All, Allow)],
            ..AuthConfig::default()
        })
        .expect_err("bad topic");
        assert!(
            matches!(err, AuthError::BadAclTopic { index: 1, .. }),
            "{err}"
        );
        assert!(Acl::new(&AuthConfig {
            acl: vec![rule("u/%u/#", All, Allow)],
            ..AuthConfig::default()
        })
        .is_ok());
    }
}
