use std::path::{Path, PathBuf};

use tern_broker::{AclAccess, AclDecision};

use super::*;

fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

fn flags(set: &[&str]) -> Overrides {
    Overrides {
        set: set.iter().map(|s| s.to_string()).collect(),
        ..Overrides::default()
    }
}

/// A config file with `text`, in a directory of its own; removed on drop.
struct TempFile(PathBuf);

impl TempFile {
    fn new(text: &str) -> Self {
        use std::sync::atomic::{AtomicU64, Ordering};
        static NEXT: AtomicU64 = AtomicU64::new(0);
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let path =
            std::env::temp_dir().join(format!("tern-config-test-{}-{n}.toml", std::process::id()));
        std::fs::write(&path, text).unwrap();
        Self(path)
    }

    fn path(&self) -> &Path {
        &self.0
    }

    fn overrides(&self) -> Overrides {
        Overrides {
            config_file: Some(self.0.clone()),
            ..Overrides::default()
        }
    }
}

impl Drop for TempFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

fn load_err(overrides: &Overrides, env_pairs: &[(&str, &str)]) -> String {
    load(overrides, env(env_pairs))
        .expect_err("config should be rejected")
        .to_string()
}

#[test]
fn nothing_given_means_the_embedded_defaults() {
    let config = load(&Overrides::default(), Vec::new()).unwrap();
    assert_eq!(config, Config::default());
    assert_eq!(config.mqtt.listen.to_string(), "0.0.0.0:1883");
    assert_eq!(config.http.listen.to_string(), "0.0.0.0:9090");
    assert_eq!(config.mqtt.max_connections, 100_000);
    assert_eq!(config.node.data_dir, PathBuf::from("./data"));
    assert_eq!(config.node.shutdown_grace_secs, 10);
    assert_eq!(
        (config.log.level.as_str(), config.log.format),
        ("info", LogFormat::Text)
    );
    assert!(config.auth.allow_anonymous);
    assert!(config.validate().is_ok());
}

#[test]
fn file_values_override_defaults_and_keep_the_rest() {
    let file = TempFile::new(
        r#"
        [mqtt]
        listen = "127.0.0.1:1884"

        [broker]
        max_packet_size = 4096
        maximum_qos = 1

        [auth]
        allow_anonymous = false
        acl_default = "deny"

        [[auth.users]]
        username = "alice"
        password_hash = "$argon2id$v=19$m=19456,t=2,p=1$dCIaFypVigFWKw+gfclfHg$++5lufbbqXM7zdKtJfEXz/3XIuJXjpWm21cQ+suvrv4"

        [[auth.acl]]
        username = "alice"
        topic = "devices/%u/#"
        access = "all"
        decision = "allow"

        [[auth.acl]]
        topic = "clients/%c/in"
        access = "subscribe"
        decision = "allow"
        "#,
    );
    let config = load(&file.overrides(), Vec::new()).unwrap();
    assert_eq!(config.mqtt.listen.to_string(), "127.0.0.1:1884");
    assert_eq!(config.mqtt.max_connections, 100_000);
    assert_eq!(config.broker.max_packet_size, 4096);
    assert_eq!(config.broker.maximum_qos, 1);
    assert_eq!(
        config.broker.receive_maximum,
        BrokerConfig::default().receive_maximum
    );
    assert!(!config.auth.allow_anonymous);
    assert_eq!(config.auth.acl_default, AclDecision::Deny);
    assert_eq!(config.auth.users[0].username, "alice");
    assert_eq!(config.auth.acl.len(), 2);
    assert_eq!(config.auth.acl[0].username.as_deref(), Some("alice"));
    assert_eq!(config.auth.acl[1].client_id, None);
    assert_eq!(config.auth.acl[1].access, AclAccess::Subscribe);
}

#[test]
fn environment_variables_set_keys() {
    let config = load(
        &Overrides::default(),
        env(&[
            ("TERN_BROKER__MAX_PACKET_SIZE", "2048"),
            ("TERN_MQTT__LISTEN", "127.0.0.1:1884"),
            ("tern_log__format", "json"),
            ("Tern_Broker__Retain_Available", "false"),
            ("TERN_NODE__DATA_DIR", "/var/lib/tern"),
            (
                "TERN_AUTH__ACL",
                r#"[{topic = "a/#", access = "publish", decision = "deny"}]"#,
            ),
            ("PATH", "/usr/bin"),
        ]),
    )
    .unwrap();
    assert_eq!(config.broker.max_packet_size, 2048);
    assert_eq!(config.mqtt.listen.to_string(), "127.0.0.1:1884");
    assert_eq!(config.log.format, LogFormat::Json);
    assert!(!config.broker.retain_available);
    assert_eq!(config.node.data_dir, PathBuf::from("/var/lib/tern"));
    assert_eq!(config.auth.acl[0].decision, AclDecision::Deny);
}

#[test]
fn kubernetes_service_variables_are_not_config_keys() {
    // Kubernetes adds these for a Service named `tern`; they must not stop the node.
    let config = load(
        &Overrides::default(),
        env(&[
            ("TERN_SERVICE_HOST", "10.0.0.1"),
            ("TERN_PORT", "tcp://10.0.0.1:1883"),
            ("TERN_PORT_1883_TCP_ADDR", "10.0.0.1"),
        ]),
    )
    .unwrap();
    assert_eq!(config, Config::default());
}

#[test]
fn text_that_looks_like_a_number_still_fits_a_string_key() {
    let config = load(
        &Overrides::default(),
        env(&[
            ("TERN_NODE__DATA_DIR", "2026"),
            ("TERN_BROKER__RESPONSE_INFORMATION", "true"),
        ]),
    )
    .unwrap();
    assert_eq!(config.node.data_dir, PathBuf::from("2026"));
    assert_eq!(config.broker.response_information, "true");
    // Quoting forces a string too.
    let config = load(&flags(&[r#"log.level="warn""#]), Vec::new()).unwrap();
    assert_eq!(config.log.level, "warn");
}

#[test]
fn set_flags_reach_every_key() {
    let config = load(
        &flags(&[
            "broker.max_inflight=7",
            "node.shutdown_grace_secs = 3",
            "node.worker_threads=1",
            "broker.response_information=",
            "auth.users=[{username = \"bob\", password_hash = \"$argon2id$v=19$m=19456,t=2,p=1$dCIaFypVigFWKw+gfclfHg$++5lufbbqXM7zdKtJfEXz/3XIuJXjpWm21cQ+suvrv4\"}]",
            "broker={max_keep_alive = 60}",
        ]),
        Vec::new(),
    )
    .unwrap();
    assert_eq!(config.broker.max_inflight, 7);
    assert_eq!(config.node.shutdown_grace_secs, 3);
    assert_eq!(config.node.worker_threads, 1);
    assert_eq!(config.broker.response_information, "");
    assert_eq!(config.auth.users[0].username, "bob");
    // An inline table merges into the section rather than replacing it.
    assert_eq!(config.broker.max_keep_alive, 60);
    assert_eq!(config.broker.max_inflight, 7);
}

#[test]
fn later_layers_win() {
    let file = TempFile::new("[broker]\nmax_packet_size = 1000\nmax_inflight = 10\nmax_keep_alive = 100\n[mqtt]\nlisten = \"127.0.0.1:1\"\n");
    let env_pairs = [
        ("TERN_BROKER__MAX_INFLIGHT", "20"),
        ("TERN_BROKER__MAX_KEEP_ALIVE", "200"),
        ("TERN_MQTT__LISTEN", "127.0.0.1:2"),
    ];
    let overrides = Overrides {
        set: vec![
            "broker.max_keep_alive=300".into(),
            "mqtt.listen=127.0.0.1:3".into(),
        ],
        mqtt_listen: Some("127.0.0.1:4".into()),
        ..file.overrides()
    };
    let config = load(&overrides, env(&env_pairs)).unwrap();
    assert_eq!(config.broker.max_packet_size, 1000, "file beats default");
    assert_eq!(config.broker.max_inflight, 20, "env beats file");
    assert_eq!(config.broker.max_keep_alive, 300, "flag beats env");
    assert_eq!(
        config.mqtt.listen.to_string(),
        "127.0.0.1:4",
        "convenience flag beats --set"
    );
    assert_eq!(
        config.broker.receive_maximum, 1024,
        "untouched keys keep their default"
    );
}

#[test]
fn config_file_comes_from_flag_or_tern_config() {
    let by_env = TempFile::new("[mqtt]\nmax_connections = 11\n");
    let by_flag = TempFile::new("[mqtt]\nmax_connections = 22\n");
    let tern_config = by_env.path().to_str().unwrap();
    let config = load(&Overrides::default(), env(&[("TERN_CONFIG", tern_config)])).unwrap();
    assert_eq!(config.mqtt.max_connections, 11);
    let config = load(&by_flag.overrides(), env(&[("TERN_CONFIG", tern_config)])).unwrap();
    assert_eq!(
        config.mqtt.max_connections, 22,
        "--config wins over TERN_CONFIG"
    );
}

#[test]
fn missing_file_names_its_path() {
    let overrides = Overrides {
        config_file: Some("/nonexistent/tern.toml".into()),
        ..Overrides::default()
    };
    let err = load_err(&overrides, &[]);
    assert!(err.contains("/nonexistent/tern.toml"), "{err}");
    let err = load_err(
        &Overrides::default(),
        &[("TERN_CONFIG", "/nonexistent/env.toml")],
    );
    assert!(err.contains("/nonexistent/env.toml"), "{err}");
}

#[test]
fn invalid_toml_names_the_file_and_line() {
    let file = TempFile::new("[broker]\nmax_packet_size = = 3\n");
    let err = load_err(&file.overrides(), &[]);
    assert!(err.contains(&file.path().display().to_string()), "{err}");
    assert!(err.contains("line 2"), "{err}");
}

#[test]
fn unknown_keys_are_named_with_their_source() {
    let file = TempFile::new("[broker]\nmax_pakcet_size = 3\n");
    let err = load_err(&file.overrides(), &[]);
    assert!(
        err.contains("unknown key `broker.max_pakcet_size`"),
        "{err}"
    );
    assert!(
        err.contains(&format!("config file {}", file.path().display())),
        "{err}"
    );
    assert!(
        err.contains("max_packet_size"),
        "should list the valid keys: {err}"
    );

    let file = TempFile::new("[brokr]\nmaximum_qos = 1\n");
    let err = load_err(&file.overrides(), &[]);
    assert!(err.contains("unknown key `brokr`"), "{err}");

    let file = TempFile::new("[typo]\n");
    assert!(load_err(&file.overrides(), &[]).contains("unknown key `typo`"));

    let err = load_err(&Overrides::default(), &[("TERN_MQTT__LISTN", "x")]);
    assert!(err.contains("unknown key `mqtt.listn`"), "{err}");
    assert!(
        err.contains("environment variable TERN_MQTT__LISTN"),
        "{err}"
    );

    let err = load_err(&flags(&["node.data=1"]), &[]);
    assert!(err.contains("unknown key `node.data`"), "{err}");
    assert!(err.contains("flag --set node.data=1"), "{err}");

    let err = load_err(
        &flags(&[
            "auth.acl=[{topic = \"a\", access = \"all\", decision = \"allow\", user = \"x\"}]",
        ]),
        &[],
    );
    assert!(err.contains("unknown key `auth.acl[0].user`"), "{err}");
}

#[test]
fn bad_values_name_key_expected_type_and_source() {
    let err = load_err(
        &Overrides::default(),
        &[("TERN_BROKER__MAX_PACKET_SIZE", "big")],
    );
    assert!(err.contains("`broker.max_packet_size`"), "{err}");
    assert!(err.contains("u32"), "should name the expected type: {err}");
    assert!(
        err.contains("environment variable TERN_BROKER__MAX_PACKET_SIZE"),
        "{err}"
    );

    let file = TempFile::new("[broker]\nmax_keep_alive = 70000\n");
    let err = load_err(&file.overrides(), &[]);
    assert!(
        err.contains("`broker.max_keep_alive`") && err.contains("u16"),
        "{err}"
    );
    assert!(err.contains("config file"), "{err}");

    let err = load_err(&flags(&["node.worker_threads=5000"]), &[]);
    assert!(
        err.contains("`node.worker_threads`") && err.contains("at most 1024"),
        "{err}"
    );

    let err = load_err(&flags(&["log.format=xml"]), &[]);
    assert!(
        err.contains("`log.format`") && err.contains("text") && err.contains("json"),
        "{err}"
    );

    let err = load_err(
        &Overrides {
            mqtt_listen: Some("localhost".into()),
            ..Overrides::default()
        },
        &[],
    );
    assert!(
        err.contains("`mqtt.listen`") && err.contains("flag --mqtt-listen localhost"),
        "{err}"
    );

    let err = load_err(&flags(&["auth.allow_anonymous=maybe"]), &[]);
    assert!(
        err.contains("`auth.allow_anonymous`") && err.contains("bool"),
        "{err}"
    );

    let file = TempFile::new(
        "[[auth.users]]\nusername = \"a\"\npassword_hash = \"$argon2id$v=19$m=19456,t=2,p=1$dCIaFypVigFWKw+gfclfHg$++5lufbbqXM7zdKtJfEXz/3XIuJXjpWm21cQ+suvrv4\"\n[[auth.users]]\nusername = \"b\"\n",
    );
    let err = load_err(&file.overrides(), &[]);
    assert!(
        err.contains("`auth.users[1]`") && err.contains("password_hash"),
        "{err}"
    );
}

#[test]
fn malformed_flags_and_variables_are_rejected() {
    assert!(load_err(&flags(&["broker.maximum_qos"]), &[]).contains("key.path=value"));
    assert!(
        load_err(&flags(&["broker..maximum_qos=1"]), &[]).contains("--set broker..maximum_qos=1")
    );
    assert!(load_err(&Overrides::default(), &[("TERN_BROKER__", "1")]).contains("TERN_BROKER__"));
}

#[test]
fn semantic_rules_name_the_key_and_source() {
    for (flag, key) in [
        ("broker.maximum_qos=3", "broker.maximum_qos"),
        ("broker.receive_maximum=0", "broker.receive_maximum"),
        ("broker.max_inflight=0", "broker.max_inflight"),
        ("broker.max_packet_size=15", "broker.max_packet_size"),
        ("broker.max_client_id_len=8", "broker.max_client_id_len"),
        (
            "broker.connect_timeout_secs=0",
            "broker.connect_timeout_secs",
        ),
        ("mqtt.max_connections=0", "mqtt.max_connections"),
        ("node.data_dir=\"\"", "node.data_dir"),
        ("log.level=\"=[\"", "log.level"),
    ] {
        let err = load_err(&flags(&[flag]), &[]);
        assert!(err.contains(&format!("invalid `{key}`")), "{flag}: {err}");
        assert!(err.contains(&format!("flag --set {flag}")), "{flag}: {err}");
    }
    assert!(load(
        &flags(&["broker.max_packet_size=16", "broker.maximum_qos=0"]),
        Vec::new()
    )
    .is_ok());

    let file = TempFile::new("[broker]\nmaximum_qos = 5\n");
    let err = load_err(&file.overrides(), &[]);
    assert!(
        err.contains("invalid `broker.maximum_qos`") && err.contains("config file"),
        "{err}"
    );

    let err = load_err(
        &flags(&["auth.users=[{username = \"a\", password_hash = \"hunter2\"}]"]),
        &[],
    );
    assert!(
        err.contains("invalid `auth.users[0].password_hash`") && err.contains("tern passwd"),
        "{err}"
    );
    assert!(err.contains("flag --set auth.users="), "{err}");

    let hash = "$argon2id$v=19$m=19456,t=2,p=1$dCIaFypVigFWKw+gfclfHg$++5lufbbqXM7zdKtJfEXz/3XIuJXjpWm21cQ+suvrv4";
    let twice = format!("auth.users=[{{username=\"a\", password_hash=\"{hash}\"}}, {{username=\"a\", password_hash=\"{hash}\"}}]");
    let err = load_err(&flags(&[&twice]), &[]);
    assert!(err.contains("invalid `auth.users[1].username`"), "{err}");
}

#[test]
fn printed_config_loads_back_identically() {
    let mut config = load(
        &flags(&[
            "auth.users=[{username = \"bob\", password_hash = \"$argon2id$v=19$m=19456,t=2,p=1$dCIaFypVigFWKw+gfclfHg$++5lufbbqXM7zdKtJfEXz/3XIuJXjpWm21cQ+suvrv4\"}]",
            "auth.acl=[{username = \"bob\", topic = \"%u/#\", access = \"all\", decision = \"allow\"}, {client_id = \"c1\", topic = \"x\", access = \"publish\", decision = \"deny\"}]",
            "log.format=json",
        ]),
        Vec::new(),
    )
    .unwrap();
    config.mqtt.listen = "[::1]:1883".parse().unwrap();
    let text = config.to_toml();
    let file = TempFile::new(&text);
    assert_eq!(
        load(&file.overrides(), Vec::new()).unwrap(),
        config,
        "{text}"
    );
    assert_eq!(
        toml::from_str::<Config>(&Config::default().to_toml()).unwrap(),
        Config::default()
    );
}

#[test]
fn values_parse_as_toml_or_stay_strings() {
    assert_eq!(parse_value("42"), toml::Value::Integer(42));
    assert_eq!(parse_value("true"), toml::Value::Boolean(true));
    assert_eq!(
        parse_value("[1, 2]"),
        toml::Value::Array(vec![1.into(), 2.into()])
    );
    assert_eq!(
        parse_value("\"quoted\""),
        toml::Value::String("quoted".into())
    );
    assert_eq!(
        parse_value("0.0.0.0:1883"),
        toml::Value::String("0.0.0.0:1883".into())
    );
    assert_eq!(
        parse_value("info,tern=debug"),
        toml::Value::String("info,tern=debug".into())
    );
    assert_eq!(
        parse_value("1\nother = 2"),
        toml::Value::String("1\nother = 2".into())
    );
    assert_eq!(parse_value(""), toml::Value::String(String::new()));
}

#[test]
fn env_names_map_to_key_paths_and_back() {
    assert_eq!(
        env_key_path("TERN_BROKER__MAX_PACKET_SIZE").unwrap(),
        ["broker", "max_packet_size"]
    );
    assert_eq!(env_key_path("tern_log__level").unwrap(), ["log", "level"]);
    assert_eq!(env_key_path("TERN_CONFIG"), None);
    assert_eq!(env_key_path("TERNX__A"), None);
    assert_eq!(env_key_path("OTHER__A"), None);
    assert_eq!(
        env_var_name("broker.max_packet_size"),
        "TERN_BROKER__MAX_PACKET_SIZE"
    );
}

#[test]
fn the_broker_checks_hashes_and_acl_topics_at_load_time() {
    let err = load_err(
        &flags(&[
            "auth.users=[{username = \"a\", password_hash = \"$argon2id$not-really-a-hash\"}]",
        ]),
        &[],
    );
    assert!(err.contains("invalid `auth.users`"), "{err}");
    assert!(err.contains("flag --set auth.users="), "{err}");
    assert!(
        !err.contains("not-really-a-hash"),
        "hashes stay out of messages: {err}"
    );

    let err = load_err(
        &flags(&["auth.acl=[{topic = \"a/#/b\", access = \"all\", decision = \"deny\"}]"]),
        &[],
    );
    assert!(err.contains("invalid `auth.acl[0]`"), "{err}");
    assert!(err.contains("flag --set auth.acl="), "{err}");
}

#[test]
fn errors_blame_the_layer_that_set_the_value_last() {
    let file = TempFile::new("[broker]\nmaximum_qos = 1\n");
    let overrides = Overrides {
        set: vec!["broker={maximum_qos = 7}".into()],
        ..file.overrides()
    };
    let err = load_err(&overrides, &[]);
    assert!(
        err.contains("invalid `broker.maximum_qos` (from flag --set broker="),
        "{err}"
    );

    let err = load_err(&file.overrides(), &[("TERN_BROKER__RECEIVE_MAXIMUM", "0")]);
    assert!(
        err.contains("(from environment variable TERN_BROKER__RECEIVE_MAXIMUM)"),
        "{err}"
    );
    let err = load_err(
        &Overrides::default(),
        &[("TERN_MQTT__MAX_CONNECTIONS", "0")],
    );
    assert!(
        err.contains("(from environment variable TERN_MQTT__MAX_CONNECTIONS)"),
        "{err}"
    );
}

#[test]
fn cluster_is_off_by_default_and_nested_keys_layer() {
    let config = load(&Overrides::default(), Vec::new()).unwrap();
    assert!(!config.cluster.enabled);
    assert_eq!(config.cluster.raft.heartbeat_ms, 250);

    let file = TempFile::new("[cluster.raft]\nheartbeat_ms = 100\nelection_timeout_min_ms = 900\n");
    let from_env = load(
        &file.overrides(),
        env(&[("TERN_CLUSTER__RAFT__HEARTBEAT_MS", "200")]),
    )
    .unwrap();
    assert_eq!(
        from_env.cluster.raft.heartbeat_ms, 200,
        "env beats the file"
    );
    assert_eq!(from_env.cluster.raft.election_timeout_min_ms, 900);
    let from_flag = load(
        &Overrides {
            set: vec!["cluster.raft.heartbeat_ms=300".into()],
            ..file.overrides()
        },
        env(&[("TERN_CLUSTER__RAFT__HEARTBEAT_MS", "200")]),
    )
    .unwrap();
    assert_eq!(from_flag.cluster.raft.heartbeat_ms, 300, "--set beats env");

    let transport = load(
        &Overrides::default(),
        env(&[("TERN_CLUSTER__TRANSPORT__CONGESTION", "bbr")]),
    )
    .unwrap();
    assert_eq!(
        transport.cluster.transport.congestion,
        tern_cluster::transport::Congestion::Bbr
    );
}

#[test]
fn cluster_shorthand_flags_set_their_keys() {
    let config = load(
        &Overrides {
            cluster: true,
            node_id: Some("2".into()),
            cluster_listen: Some("127.0.0.1:7001".into()),
            advertise: Some("tern-2.local:7001".into()),
            region: Some("eu-west".into()),
            seeds: Some("tern-0.local:7001, tern-1.local:7001".into()),
            ..Overrides::default()
        },
        Vec::new(),
    )
    .unwrap();
    let c = &config.cluster;
    assert!(c.enabled);
    assert_eq!(c.node_id, Some(2));
    assert_eq!(c.listen.to_string(), "127.0.0.1:7001");
    assert_eq!(c.advertise, "tern-2.local:7001");
    assert_eq!(c.region, "eu-west");
    assert_eq!(c.seeds, ["tern-0.local:7001", "tern-1.local:7001"]);

    let err = load_err(
        &Overrides {
            node_id: Some("two".into()),
            ..Overrides::default()
        },
        &[],
    );
    assert!(err.contains("`cluster.node_id`"), "{err}");
    assert!(err.contains("--node-id two"), "{err}");
}

#[test]
fn seeds_come_from_a_comma_list_or_a_toml_array() {
    for raw in ["a:1,b:2", r#"["a:1", "b:2"]"#] {
        let config = load(&Overrides::default(), env(&[("TERN_CLUSTER__SEEDS", raw)])).unwrap();
        assert_eq!(config.cluster.seeds, ["a:1", "b:2"], "{raw}");
    }
    let single = load(&flags(&["cluster.seeds=tern-0:7946"]), Vec::new()).unwrap();
    assert_eq!(single.cluster.seeds, ["tern-0:7946"]);
}

#[test]
fn cluster_validation_names_the_key_and_its_source() {
    let on = ("TERN_CLUSTER__ENABLED", "true");
    let err = load_err(&Overrides::default(), &[on]);
    assert!(err.contains("invalid `cluster.advertise`"), "{err}");

    let err = load_err(
        &Overrides::default(),
        &[
            on,
            ("TERN_CLUSTER__ADVERTISE", "10.0.0.1:7946"),
            ("TERN_CLUSTER__RAFT__HEARTBEAT_MS", "5000"),
        ],
    );
    assert!(
        err.contains("invalid `cluster.raft.election_timeout_min_ms`"),
        "{err}"
    );

    let err = load_err(
        &flags(&[
            "cluster.enabled=true",
            "cluster.listen=127.0.0.1:7946",
            "cluster.voters=9",
        ]),
        &[],
    );
    assert!(err.contains("invalid `cluster.voters`"), "{err}");
    assert!(err.contains("--set cluster.voters=9"), "{err}");

    let err = load_err(
        &flags(&[
            "cluster.enabled=true",
            "cluster.listen=127.0.0.1:7946",
            "cluster.transport.keep_alive_interval_ms=0",
        ]),
        &[],
    );
    assert!(
        err.contains("invalid `cluster.transport.keep_alive_interval_ms`"),
        "{err}"
    );
    assert!(err.contains("--set cluster.transport"), "{err}");

    // Clustering off: its settings are not checked.
    load(&flags(&["cluster.voters=9"]), Vec::new()).unwrap();

    let err = load_err(
        &Overrides::default(),
        &[("TERN_CLUSTER__RAFT__HEARTBEATS_MS", "1")],
    );
    assert!(
        err.contains("unknown key `cluster.raft.heartbeats_ms`"),
        "{err}"
    );
}

#[test]
fn a_clustered_config_round_trips_through_toml() {
    let config = load(
        &flags(&[
            "cluster.enabled=true",
            "cluster.node_id=3",
            "cluster.listen=127.0.0.1:7946",
            "cluster.seeds=a:1,b:2",
        ]),
        Vec::new(),
    )
    .unwrap();
    assert_eq!(toml::from_str::<Config>(&config.to_toml()).unwrap(), config);
}
