//! Interop with paho-mqtt 2.x (Python): the scripts in tests/python/, each run with
//! python3 against a fresh node. A script prints one JSON object and exits 0 only when all
//! of its checks passed.

use std::time::Duration;

use tern_tests::external::{repo_root, run};
use tern_tests::TestNode;
use tokio::process::Command;

/// The interpreter: $TERN_TEST_PYTHON, else python3 from PATH.
fn python() -> String {
    std::env::var("TERN_TEST_PYTHON").unwrap_or_else(|_| "python3".to_string())
}

async fn script(name: &str, version: &str) {
    let node = TestNode::start().await;
    let path = repo_root().join("tests/python").join(format!("{name}.py"));
    let mut cmd = Command::new(python());
    cmd.arg(&path)
        .arg("127.0.0.1")
        .arg(node.mqtt_port().to_string())
        .arg("--version")
        .arg(version)
        .env("PYTHONDONTWRITEBYTECODE", "1")
        .env("PYTHONUNBUFFERED", "1");
    let out = run(&mut cmd, Duration::from_secs(120)).await;
    let result = out
        .stdout
        .lines()
        .rev()
        .find(|l| l.starts_with('{'))
        .unwrap_or("");
    assert!(
        out.success() && result.contains("\"ok\": true"),
        "paho-mqtt {name}.py --version {version} failed (is paho-mqtt 2.x installed? ./scripts/test installs it)\n{}",
        out.describe()
    );
    eprintln!("{result}");
    node.shutdown().await;
}

macro_rules! paho {
    ($($test:ident => ($name:literal, $version:literal),)*) => {$(
        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn $test() {
            script($name, $version).await;
        }
    )*};
}

paho! {
    qos_round_trip_v311 => ("qos_roundtrip", "311"),
    qos_round_trip_v5 => ("qos_roundtrip", "5"),
    retained_v311 => ("retained", "311"),
    retained_v5 => ("retained", "5"),
    will_v311 => ("will", "311"),
    will_v5 => ("will", "5"),
    properties_pass_through_v5 => ("properties", "5"),
    persistent_session_v311 => ("persistent_session", "311"),
    persistent_session_v5 => ("persistent_session", "5"),
}
