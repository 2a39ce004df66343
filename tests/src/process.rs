//! Child processes that are killed when the test that started them ends, pass or fail.

use std::path::PathBuf;
use std::process::{Child, Command};

pub struct ChildGuard {
    pub child: Child,
}

impl ChildGuard {
    pub fn spawn(cmd: &mut Command) -> std::io::Result<Self> {
        Ok(Self {
            child: cmd.spawn()?,
        })
    }
}

impl Drop for ChildGuard {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The `tern` binary built alongside the tests (target/<profile>/tern).
pub fn tern_binary() -> PathBuf {
    let exe = std::env::current_exe().expect("test binary path");
    // target/<profile>/deps/<test> -> target/<profile>/tern
    let profile_dir = exe
        .parent()
        .and_then(|d| d.parent())
        .expect("target/<profile>");
    let bin = profile_dir.join("tern");
    assert!(
        bin.exists(),
        "{} missing: build it first (`cargo build -p tern`)",
        bin.display()
    );
    bin
}
