//! Layering: embedded defaults < TOML file < `TERN_...` environment variables < flags.
//!
//! Every layer is turned into a list of (key path, value) entries. Each entry is checked
//! on its own against [`Config`], so an unknown key or a bad value is reported with the
//! file, variable or flag it came from. The entries are then merged into one TOML table,
//! deserialized once, and validated.

use std::collections::BTreeMap;
use std::path::PathBuf;

use toml::{Table, Value};

use super::{Config, ConfigError, Source};

/// The environment variable naming the config file (the `--config` flag wins over it).
pub const CONFIG_ENV: &str = "TERN_CONFIG";

const ENV_PREFIX: &str = "TERN_";
const ENV_SEPARATOR: &str = "__";

/// What the command line adds to the configuration.
#[derive(Clone, Debug, Default)]
pub struct Overrides {
    /// `--config PATH`.
    pub config_file: Option<PathBuf>,
    /// `--set key.path=value`, in the order given.
    pub set: Vec<String>,
    /// `--mqtt-listen ADDR`: `mqtt.listen`.
    pub mqtt_listen: Option<String>,
    /// `--http-listen ADDR`: `http.listen`.
    pub http_listen: Option<String>,
    /// `--data-dir PATH`: `node.data_dir`.
    pub data_dir: Option<String>,
    /// `--log-level FILTER`: `log.level`.
    pub log_level: Option<String>,
    /// `--cluster`: `cluster.enabled = true`.
    pub cluster: bool,
    /// `--node-id N`: `cluster.node_id`.
    pub node_id: Option<String>,
    /// `--cluster-listen ADDR`: `cluster.listen`.
    pub cluster_listen: Option<String>,
    /// `--advertise HOST:PORT`: `cluster.advertise`.
    pub advertise: Option<String>,
    /// `--region R`: `cluster.region`.
    pub region: Option<String>,
    /// `--seeds 0@a:1,1@b:2`: `cluster.seeds`.
    pub seeds: Option<String>,
}

/// One key set by one source.
struct Entry {
    path: Vec<String>,
    value: Value,
    /// The text the value was parsed from (environment and `--set`): if the parsed value
    /// does not fit, the text itself is tried as a string.
    raw: Option<String>,
    origin: Source,
}

/// Builds the effective configuration from the command line and the environment
/// (pass `std::env::vars()`; tests pass their own pairs).
pub fn load<I>(overrides: &Overrides, env: I) -> Result<Config, ConfigError>
where
    I: IntoIterator<Item = (String, String)>,
{
    let mut env: Vec<(String, String)> = env.into_iter().collect();
    // Deterministic order if two spellings of one variable differ only in case.
    env.sort();

    let mut entries = Vec::new();

    let file = overrides.config_file.clone().or_else(|| {
        env.iter()
            .find(|(name, value)| name.eq_ignore_ascii_case(CONFIG_ENV) && !value.is_empty())
            .map(|(_, value)| PathBuf::from(value))
    });
    if let Some(path) = file {
        entries.extend(file_entries(path)?);
    }
    for (name, value) in &env {
        if let Some(entry) = env_entry(name, value)? {
            entries.push(entry);
        }
    }
    for arg in &overrides.set {
        entries.push(set_entry(arg)?);
    }
    entries.extend(convenience_entries(overrides));
    let mut root = Table::new();
    let mut origins = BTreeMap::new();
    for mut entry in entries {
        check(&mut entry)?;
        record_origin(&mut origins, &entry);
        insert_at(&mut root, &entry.path, entry.value);
    }

    let config: Config = Value::Table(root)
        .try_into()
        .map_err(|e: toml::de::Error| {
            // Each entry passed on its own, so this is a combination of them.
            ConfigError::Malformed {
                origin: Source::Default,
                reason: format!("the merged configuration: {}", e.message()),
            }
        })?;
    config.validate().map_err(|(key, reason)| {
        let origin = origin_of(&origins, &key);
        ConfigError::Invalid {
            key,
            origin,
            reason,
        }
    })?;
    // The broker checks the rest (password hashes parse, ACL topics are valid filters)
    // when it is built; building one here catches those in `tern config show` too.
    if let Err(e) = tern_broker::Broker::new(
        config.broker.clone(),
        config.auth.clone(),
        tern_cluster::single_node(),
    ) {
        let (key, reason) = broker_error_key(&e);
        let origin = origin_of(&origins, &key);
        return Err(ConfigError::Invalid {
            key,
            origin,
            reason,
        });
    }
    Ok(config)
}

/// The shorthand flags, as entries (after `--set`, so they win over it).
fn convenience_entries(overrides: &Overrides) -> Vec<Entry> {
    let flags = [
        ("--mqtt-listen", "mqtt.listen", &overrides.mqtt_listen),
        ("--http-listen", "http.listen", &overrides.http_listen),
        ("--data-dir", "node.data_dir", &overrides.data_dir),
        ("--log-level", "log.level", &overrides.log_level),
        ("--node-id", "cluster.node_id", &overrides.node_id),
        (
            "--cluster-listen",
            "cluster.listen",
            &overrides.cluster_listen,
        ),
        ("--advertise", "cluster.advertise", &overrides.advertise),
        ("--region", "cluster.region", &overrides.region),
        ("--seeds", "cluster.seeds", &overrides.seeds),
    ];
    let mut entries = Vec::new();
    if overrides.cluster {
        entries.push(Entry {
            path: vec!["cluster".to_string(), "enabled".to_string()],
            value: Value::Boolean(true),
            raw: None,
            origin: Source::Flag("--cluster".to_string()),
        });
    }
    for (flag, key, value) in flags {
        if let Some(value) = value {
            // Numbers (`--node-id 2`) are read as TOML, and a comma-separated list
            // (`--seeds a:1,b:2`) as an array; anything else stays a string.
            entries.push(Entry {
                path: key.split('.').map(str::to_string).collect(),
                value: Value::String(value.clone()),
                raw: Some(value.clone()),
                origin: Source::Flag(format!("{flag} {value}")),
            });
        }
    }
    entries
}

/// `a:1, b:2` as an array of strings (empty items dropped): how a list of plain strings
/// such as `cluster.seeds` can be given in an environment variable or flag.
fn comma_list(raw: &str) -> Value {
    Value::Array(
        raw.split(',')
            .map(str::trim)
            .filter(|item| !item.is_empty())
            .map(|item| Value::String(item.to_string()))
            .collect(),
    )
}

/// The key a broker error is about: its message starts with the key
/// (`auth.acl[2]: invalid topic ...`), else the whole section is named.
fn broker_error_key(error: &tern_broker::BrokerError) -> (String, String) {
    let (section, message) = match error {
        tern_broker::BrokerError::Auth(message) => ("auth", message),
        tern_broker::BrokerError::Config(message) => ("broker", message),
    };
    let lead = message.split([':', ' ']).next().unwrap_or("");
    let is_key = lead.starts_with(&format!("{section}."))
        && lead
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "_.[]".contains(c));
    if is_key {
        let reason = message[lead.len()..].trim_start_matches(':').trim();
        (lead.to_string(), reason.to_string())
    } else {
        (section.to_string(), message.clone())
    }
}

/// Parses a value from the environment or `--set`: as a TOML value if it is one (number,
/// bool, array, inline table, quoted string), otherwise as the string itself.
pub fn parse_value(raw: &str) -> Value {
    match format!("v = {raw}").parse::<Table>() {
        // A second key would mean the text smuggled in more than one value.
        Ok(mut table) if table.len() == 1 => table
            .remove("v")
            .unwrap_or_else(|| Value::String(raw.to_string())),
        _ => Value::String(raw.to_string()),
    }
}

/// The key path an environment variable sets, if it is a config variable:
/// `TERN_BROKER__MAX_PACKET_SIZE` gives `["broker", "max_packet_size"]`. Variables
/// without a `__` (such as `TERN_CONFIG`, or the `TERN_SERVICE_HOST` Kubernetes adds for
/// a Service named `tern`) are not config keys. Names are case-insensitive.
pub fn env_key_path(name: &str) -> Option<Vec<String>> {
    let prefix = name.get(..ENV_PREFIX.len())?;
    if !prefix.eq_ignore_ascii_case(ENV_PREFIX) {
        return None;
    }
    let rest = &name[ENV_PREFIX.len()..];
    if !rest.contains(ENV_SEPARATOR) {
        return None;
    }
    Some(
        rest.split(ENV_SEPARATOR)
            .map(str::to_ascii_lowercase)
            .collect(),
    )
}

/// The environment variable for a key path: `broker.max_packet_size` gives
/// `TERN_BROKER__MAX_PACKET_SIZE`.
pub fn env_var_name(key: &str) -> String {
    format!(
        "{ENV_PREFIX}{}",
        key.split('.')
            .map(str::to_ascii_uppercase)
            .collect::<Vec<_>>()
            .join(ENV_SEPARATOR)
    )
}

fn file_entries(path: PathBuf) -> Result<Vec<Entry>, ConfigError> {
    let text = std::fs::read_to_string(&path).map_err(|error| ConfigError::ReadFile {
        path: path.clone(),
        error,
    })?;
    let table: Table = text
        .parse()
        .map_err(|e: toml::de::Error| ConfigError::Syntax {
            path: path.clone(),
            message: e.to_string().trim_end().to_string(),
        })?;
    let mut leaves = Vec::new();
    flatten(&mut Vec::new(), table, &mut leaves);
    let origin = Source::File(path);
    Ok(leaves
        .into_iter()
        .map(|(path, value)| Entry {
            path,
            value,
            raw: None,
            origin: origin.clone(),
        })
        .collect())
}

/// Splits a table into its leaves: every value that is not a table, and every empty table
/// (so that an empty `[typo]` section is still reported).
fn flatten(prefix: &mut Vec<String>, table: Table, out: &mut Vec<(Vec<String>, Value)>) {
    if table.is_empty() && !prefix.is_empty() {
        out.push((prefix.clone(), Value::Table(table)));
        return;
    }
    for (key, value) in table {
        prefix.push(key);
        match value {
            Value::Table(inner) => flatten(prefix, inner, out),
            leaf => out.push((prefix.clone(), leaf)),
        }
        prefix.pop();
    }
}

fn env_entry(name: &str, raw: &str) -> Result<Option<Entry>, ConfigError> {
    let Some(path) = env_key_path(name) else {
        return Ok(None);
    };
    let origin = Source::Env(name.to_string());
    if path.iter().any(String::is_empty) {
        return Err(ConfigError::Malformed {
            origin,
            reason: "expected TERN_<SECTION>__<KEY>, with `__` between the levels of the key"
                .to_string(),
        });
    }
    Ok(Some(Entry {
        path,
        value: parse_value(raw),
        raw: Some(raw.to_string()),
        origin,
    }))
}

/// How a `--set` flag is shown in messages: in full, except for values under
/// `auth.users` (password hashes, or a password pasted by mistake) and long values.
fn flag_label(key: &str, raw: Option<&str>) -> String {
    let key = key.trim();
    match raw {
        Some(raw)
            if key != "auth" && !key.starts_with("auth.users") && raw.chars().count() <= 60 =>
        {
            format!("--set {key}={raw}")
        }
        Some(_) => format!("--set {key}=..."),
        None if key.chars().count() <= 60 => format!("--set {key}"),
        None => "--set ...".to_string(),
    }
}

fn set_entry(arg: &str) -> Result<Entry, ConfigError> {
    let Some((key, raw)) = arg.split_once('=') else {
        return Err(ConfigError::Malformed {
            origin: Source::Flag(flag_label(arg, None)),
            reason: "expected --set key.path=value".to_string(),
        });
    };
    let path: Vec<String> = key
        .trim()
        .split('.')
        .map(|part| part.trim().to_string())
        .collect();
    let origin = Source::Flag(flag_label(key, Some(raw)));
    if path.iter().any(String::is_empty) {
        return Err(ConfigError::Malformed {
            origin,
            reason: format!("`{key}` is not a key path such as broker.maximum_qos"),
        });
    }
    Ok(Entry {
        path,
        value: parse_value(raw),
        raw: Some(raw.to_string()),
        origin,
    })
}

/// Checks one entry against [`Config`] on its own; on failure, names the key precisely
/// (down to the element of an array of tables) and the entry's source.
fn check(entry: &mut Entry) -> Result<(), ConfigError> {
    let Err(mut message) = probe(&entry.path, entry.value.clone()) else {
        return Ok(());
    };
    // `TERN_NODE__DATA_DIR=2026` parses as a number but is meant as a path; a flag's
    // `--node-id 2` is a string meant as a number; `TERN_CLUSTER__SEEDS=a:1,b:2` is
    // meant as a list.
    if let Some(raw) = &entry.raw {
        let mut candidates = vec![parse_value(raw), comma_list(raw)];
        if !entry.value.is_str() {
            candidates.insert(0, Value::String(raw.clone()));
        }
        for candidate in candidates {
            if candidate != entry.value && probe(&entry.path, candidate.clone()).is_ok() {
                entry.value = candidate;
                return Ok(());
            }
        }
    }
    let mut key = entry.path.join(".");
    if let Value::Array(items) = &entry.value {
        for (index, item) in items.iter().enumerate() {
            if let Err(item_message) = probe(&entry.path, Value::Array(vec![item.clone()])) {
                key = format!("{key}[{index}]");
                message = item_message;
                break;
            }
        }
    }
    let origin = entry.origin.clone();
    if let Some(rest) = message.strip_prefix("unknown field `") {
        let (field, detail) = rest.split_once('`').unwrap_or((rest, ""));
        let detail = detail.trim_start_matches(',').trim();
        // Name the key down to the unknown part: `foo` for an unknown section `foo.bar`.
        let key = match entry.path.iter().position(|part| part == field) {
            Some(at) if !key.contains('[') => entry.path[..=at].join("."),
            _ if key.contains('[') => format!("{key}.{field}"),
            _ => key,
        };
        let detail = if detail.is_empty() {
            "no such setting".to_string()
        } else {
            detail.to_string()
        };
        return Err(ConfigError::UnknownKey {
            key,
            origin,
            detail,
        });
    }
    if message.contains("socket address") {
        message.push_str(" (expected IP:port, such as 0.0.0.0:1883 or [::]:1883)");
    }
    Err(ConfigError::BadValue {
        key,
        origin,
        detail: message,
    })
}

/// Deserializes a configuration holding only `value` at `path`.
fn probe(path: &[String], value: Value) -> Result<(), String> {
    let mut root = Table::new();
    insert_at(&mut root, path, value);
    Value::Table(root)
        .try_into::<Config>()
        .map(drop)
        .map_err(|e| e.message().trim().to_string())
}

/// Sets `path` in `root` to `value`, creating the tables on the way; a table merges into
/// a table already there, anything else replaces what was there.
fn insert_at(root: &mut Table, path: &[String], value: Value) {
    let Some((last, parents)) = path.split_last() else {
        return;
    };
    let mut table = root;
    for part in parents {
        let slot = table
            .entry(part.clone())
            .or_insert_with(|| Value::Table(Table::new()));
        if !slot.is_table() {
            *slot = Value::Table(Table::new());
        }
        match slot {
            Value::Table(inner) => table = inner,
            _ => return,
        }
    }
    match (table.get_mut(last), value) {
        (Some(Value::Table(existing)), Value::Table(new)) => {
            for (key, value) in new {
                insert_at(existing, &[key], value);
            }
        }
        (_, value) => {
            table.insert(last.clone(), value);
        }
    }
}

/// Remembers which source set each leaf (an inline table sets the leaves inside it).
fn record_origin(origins: &mut BTreeMap<String, Source>, entry: &Entry) {
    match &entry.value {
        Value::Table(table) if !table.is_empty() => {
            let mut leaves = Vec::new();
            flatten(&mut entry.path.clone(), table.clone(), &mut leaves);
            for (path, _) in leaves {
                origins.insert(path.join("."), entry.origin.clone());
            }
        }
        _ => {
            origins.insert(entry.path.join("."), entry.origin.clone());
        }
    }
}

/// The source of the value at `key` (`auth.users[2].password_hash` looks up `auth.users`):
/// the entry that set it or the nearest table above it; the defaults if none did.
fn origin_of(origins: &BTreeMap<String, Source>, key: &str) -> Source {
    let plain: Vec<&str> = key
        .split('.')
        .map(|part| part.split('[').next().unwrap_or(part))
        .collect();
    (1..=plain.len())
        .rev()
        .find_map(|len| origins.get(&plain[..len].join(".")))
        .cloned()
        .unwrap_or(Source::Default)
}
