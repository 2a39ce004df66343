//! Waiting for the signals that end `tern serve`: SIGTERM (Kubernetes, systemd) and
//! SIGINT (Ctrl-C).

use std::io;

use tokio::signal::unix::{signal, Signal, SignalKind};

pub struct Signals {
    terminate: Signal,
    interrupt: Signal,
}

impl Signals {
    /// Installs the handlers; from now on these signals no longer kill the process at
    /// once. Call inside a tokio runtime.
    pub fn install() -> io::Result<Self> {
        Ok(Self {
            terminate: signal(SignalKind::terminate())?,
            interrupt: signal(SignalKind::interrupt())?,
        })
    }

    /// Waits for the next SIGTERM or SIGINT and returns its name.
    pub async fn recv(&mut self) -> &'static str {
        tokio::select! {
            _ = self.terminate.recv() => "SIGTERM",
            _ = self.interrupt.recv() => "SIGINT",
        }
    }
}
