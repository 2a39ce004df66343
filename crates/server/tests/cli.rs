//! The `tern` binary as an operator runs it: exit codes, messages, config layering through
//! the real environment, and a graceful stop on SIGTERM.

use std::io::{BufRead, BufReader, Write};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

fn tern() -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_tern"));
    // Keep the caller's TERN_ and RUST_LOG variables out of the tests.
    for (name, _) in std::env::vars_os() {
        let name = name.to_string_lossy().to_ascii_uppercase();
        if name.starts_with("TERN_") || name == "RUST_LOG" {
            cmd.env_remove(&name);
        }
    }
    cmd
}

/// Kills the child when the test ends, pass or fail.
struct Guard(Child);

impl Drop for Guard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn run(cmd: &mut Command) -> Output {
    cmd.stdin(Stdio::null()).output().expect("run tern")
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

#[test]
fn no_arguments_prints_help() {
    let out = run(&mut tern());
    assert_eq!(out.status.code(), Some(2));
    let help = text(&out.stderr) + &text(&out.stdout);
    assert!(
        help.contains("serve") && help.contains("passwd") && help.contains("config"),
        "{help}"
    );
}

#[test]
fn version_prints_the_version() {
    let out = run(tern().arg("version"));
    assert!(out.status.success());
    assert_eq!(
        text(&out.stdout).trim(),
        format!("tern {}", env!("CARGO_PKG_VERSION"))
    );
}

#[test]
fn config_show_merges_environment_and_flags() {
    let out = run(tern()
        .args([
            "config",
            "show",
            "--set",
            "broker.maximum_qos=1",
            "--data-dir",
            "/srv/tern",
        ])
        .env("TERN_BROKER__MAX_PACKET_SIZE", "2048")
        .env("TERN_MQTT__LISTEN", "127.0.0.1:1884")
        .env("TERN_SERVICE_HOST", "10.0.0.1"));
    assert!(out.status.success(), "{}", text(&out.stderr));
    let shown: toml::Table = text(&out.stdout).parse().expect("config show prints TOML");
    assert_eq!(shown["broker"]["max_packet_size"].as_integer(), Some(2048));
    assert_eq!(shown["broker"]["maximum_qos"].as_integer(), Some(1));
    assert_eq!(shown["mqtt"]["listen"].as_str(), Some("127.0.0.1:1884"));
    assert_eq!(shown["node"]["data_dir"].as_str(), Some("/srv/tern"));

    let out = run(tern()
        .args(["serve", "--print-config"])
        .env("TERN_LOG__FORMAT", "json"));
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(text(&out.stdout).contains("format = \"json\""));
}

#[test]
fn config_errors_exit_2_with_the_key_on_stderr() {
    let out = run(tern().args(["serve"]).env("TERN_BROKER__MAXIMUM_QOS", "3"));
    assert_eq!(out.status.code(), Some(2));
    let err = text(&out.stderr);
    assert!(
        err.contains("broker.maximum_qos") && err.contains("TERN_BROKER__MAXIMUM_QOS"),
        "{err}"
    );
    assert!(!err.contains("panicked"), "{err}");

    let out = run(tern().args(["serve", "--config", "/nonexistent/tern.toml"]));
    assert_eq!(out.status.code(), Some(2));
    assert!(text(&out.stderr).contains("/nonexistent/tern.toml"));

    let out = run(tern().args(["config", "show", "--set", "mqtt.lisen=1"]));
    assert_eq!(out.status.code(), Some(2));
    assert!(text(&out.stderr).contains("unknown key `mqtt.lisen`"));
}

#[test]
fn passwd_hashes_stdin_into_a_usable_entry() {
    let mut child = tern()
        .args(["passwd", "--username", "alice"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(b"correct horse\n")
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));
    let entry = text(&out.stdout);
    let parsed: toml::Table = entry.parse().expect("passwd prints TOML");
    let user = &parsed["auth"]["users"][0];
    assert_eq!(user["username"].as_str(), Some("alice"));
    let hash = user["password_hash"].as_str().unwrap();
    assert!(
        hash.starts_with('$') && !hash.contains("correct horse"),
        "{hash}"
    );

    // The entry is accepted as configuration.
    let dir = std::env::temp_dir().join(format!("tern-cli-passwd-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("tern.toml");
    std::fs::write(&file, &entry).unwrap();
    let out = run(tern().args(["config", "show", "-c"]).arg(&file));
    let _ = std::fs::remove_dir_all(&dir);
    assert!(out.status.success(), "{}", text(&out.stderr));

    let out = run(tern().args(["passwd", "--password", ""]));
    assert_eq!(out.status.code(), Some(2));
}

#[test]
fn serve_stops_gracefully_on_sigterm() {
    let dir = std::env::temp_dir().join(format!("tern-cli-serve-{}", std::process::id()));
    let mut child = Guard(
        tern()
            .args([
                "serve",
                "--mqtt-listen",
                "127.0.0.1:0",
                "--http-listen",
                "127.0.0.1:0",
                "--data-dir",
            ])
            .arg(&dir)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap(),
    );
    let stderr = child.0.stderr.take().unwrap();
    let mut lines = BufReader::new(stderr).lines();
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut listening = None;
    for line in lines.by_ref() {
        let line = line.unwrap();
        if line.contains("listening") {
            listening = Some(line);
            break;
        }
        assert!(Instant::now() < deadline, "no `listening` line");
    }
    let line = listening.expect("tern logs its addresses");
    assert!(
        line.contains("mqtt=127.0.0.1:") && line.contains("http=127.0.0.1:"),
        "{line}"
    );
    assert!(dir.is_dir(), "data_dir created");

    let killed = Command::new("kill")
        .args(["-TERM", &child.0.id().to_string()])
        .status()
        .unwrap();
    assert!(killed.success());
    let rest: Vec<String> = lines.map_while(Result::ok).collect();
    let status = child.0.wait().unwrap();
    let _ = std::fs::remove_dir_all(&dir);
    assert_eq!(status.code(), Some(0), "{rest:?}");
    assert!(rest.iter().any(|l| l.contains("SIGTERM")), "{rest:?}");
    assert!(rest.iter().any(|l| l.contains("stopped")), "{rest:?}");
}
