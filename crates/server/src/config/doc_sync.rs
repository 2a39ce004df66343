//! docs/configuration.md must describe every key, and only keys that exist.

use std::collections::BTreeSet;

use tern_broker::{AclAccess, AclDecision, AclRule, Broker, UserEntry};
use toml::Value;

use super::{env_var_name, Config};

const DOC: &str = include_str!("../../../../docs/configuration.md");
const SECTIONS: [&str; 7] = ["node", "mqtt", "http", "log", "broker", "auth", "cluster"];

/// A configuration with every optional part present, so that its keys are all the keys.
fn full_config() -> Config {
    let mut config = Config::default();
    config.auth.users.push(UserEntry {
        username: "u".into(),
        password_hash: "$argon2id$".into(),
    });
    config.auth.acl.push(AclRule {
        username: Some("u".into()),
        client_id: Some("c".into()),
        topic: "t".into(),
        access: AclAccess::All,
        decision: AclDecision::Allow,
    });
    // Optional keys are left out of the TOML when absent.
    config.cluster.node_id = Some(0);
    config
}

/// Key paths, with `[]` for the elements of an array of tables: `auth.users[].username`.
fn keys(prefix: &str, value: &Value, out: &mut BTreeSet<String>) {
    let join = |key: &str| {
        if prefix.is_empty() {
            key.to_string()
        } else {
            format!("{prefix}.{key}")
        }
    };
    match value {
        Value::Table(table) => {
            for (key, value) in table {
                let path = join(key);
                if !value.is_table() {
                    out.insert(path.clone());
                }
                keys(&path, value, out);
            }
        }
        Value::Array(items) => {
            for item in items.iter().filter(|item| item.is_table()) {
                keys(&format!("{prefix}[]"), item, out);
            }
        }
        _ => {}
    }
}

fn config_keys() -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    keys("", &Value::try_from(full_config()).unwrap(), &mut out);
    out
}

/// The doc's prose: every line outside fenced code blocks.
fn prose_lines() -> Vec<&'static str> {
    let mut in_fence = false;
    DOC.lines()
        .filter(|line| {
            if line.trim_start().starts_with("```") {
                in_fence = !in_fence;
                return false;
            }
            !in_fence
        })
        .collect()
}

/// Inline-code words in the doc's prose that look like key paths (`section.key...`).
fn documented_keys() -> BTreeSet<String> {
    prose_lines()
        .into_iter()
        .flat_map(|line| line.split('`').skip(1).step_by(2))
        .filter(|word| {
            word.split_once('.')
                .is_some_and(|(section, _)| SECTIONS.contains(&section))
                && word
                    .chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || "_.[]".contains(c))
        })
        .map(str::to_string)
        .collect()
}

#[test]
fn every_key_is_documented() {
    let documented = documented_keys();
    let missing: Vec<_> = config_keys()
        .into_iter()
        .filter(|key| !documented.contains(key))
        .collect();
    assert!(
        missing.is_empty(),
        "docs/configuration.md lacks these keys (in backticks): {missing:?}"
    );
}

#[test]
fn every_documented_key_exists() {
    let known = config_keys();
    let stale: Vec<_> = documented_keys()
        .into_iter()
        .filter(|key| !known.contains(key))
        .collect();
    assert!(
        stale.is_empty(),
        "docs/configuration.md names keys that do not exist: {stale:?}"
    );
}

#[test]
fn every_top_level_key_shows_its_environment_variable() {
    let missing: Vec<_> = config_keys()
        .into_iter()
        .filter(|key| !key.contains('['))
        .map(|key| env_var_name(&key))
        .filter(|var| !DOC.contains(&format!("`{var}`")))
        .collect();
    assert!(
        missing.is_empty(),
        "docs/configuration.md lacks these variables: {missing:?}"
    );
}

#[test]
fn documented_example_files_load() {
    // Every ```toml block in the doc must be a valid configuration.
    let blocks = DOC.split("```toml\n").skip(1).count();
    assert!(blocks >= 1, "the doc should show an example file");
    for (i, block) in DOC.split("```toml\n").skip(1).enumerate() {
        let text = block.split("```").next().unwrap_or("");
        let config: Config =
            toml::from_str(text).unwrap_or_else(|e| panic!("toml example {i}: {e}\n{text}"));
        if let Err((key, reason)) = config.validate() {
            panic!("toml example {i}: invalid `{key}`: {reason}\n{text}");
        }
        let built = Broker::new(config.broker, config.auth, tern_cluster::single_node());
        if let Err(e) = built {
            panic!("toml example {i}: {e}\n{text}");
        }
    }
}

#[test]
fn documented_environment_examples_load() {
    // Every ```sh block made only of TERN_ variables must be a valid configuration.
    let mut checked = 0;
    for block in DOC.split("```sh\n").skip(1) {
        let text = block.split("```").next().unwrap_or("");
        let lines: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
        if !lines.iter().all(|l| l.starts_with("TERN_")) {
            continue;
        }
        let env = lines.iter().map(|line| {
            let (name, value) = line.split_once('=').expect("NAME=value");
            let value = value
                .strip_prefix('\'')
                .and_then(|v| v.strip_suffix('\''))
                .unwrap_or(value);
            (name.to_string(), value.to_string())
        });
        if let Err(e) = super::load(&super::Overrides::default(), env) {
            panic!("environment example: {e}\n{text}");
        }
        checked += 1;
    }
    assert!(
        checked >= 2,
        "expected the doc's two environment examples, found {checked}"
    );
}
