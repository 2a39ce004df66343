//! The deployment files: deploy/kubernetes/*.yaml and the Helm chart helm/tern, checked by
//! the Python scripts under tests/deploy/ (kubernetes-validate for the Kubernetes schemas,
//! helm-sdkpy for Helm's lint and rendering, jsonschema for values.schema.json; all from
//! PyPI, installed by ./scripts/test). Both scripts also run the StatefulSet's wrapper
//! script with the real `tern` binary (`tern config show` in place of `tern serve`), so
//! it needs `cargo build -p tern` first.

use std::path::PathBuf;
use std::process::Command;

use tern_tests::external::require_tool;
use tern_tests::tern_binary;

fn run_check(script: &str) {
    let python = require_tool("python3");
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..");
    let path = root.join("tests").join("deploy").join(script);
    let out = Command::new(python)
        .arg(&path)
        .current_dir(&root)
        .env("TERN_BINARY", tern_binary())
        .output()
        .expect("run python3");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "{script} failed ({}); if a module is missing, run ./scripts/test, which installs \
         kubernetes-validate and helm-sdkpy\n--- stdout ---\n{stdout}\n--- stderr ---\n{stderr}",
        out.status
    );
    // The scripts print one line per check and end with a summary line.
    assert!(
        stdout.contains("all checks passed"),
        "{script}: no summary\n{stdout}"
    );
}

#[test]
fn kubernetes_manifests_are_valid() {
    run_check("check_manifests.py");
}

#[test]
fn helm_chart_lints_renders_and_validates() {
    run_check("check_chart.py");
}
