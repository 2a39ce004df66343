//! The command line: `tern serve`, `tern passwd`, `tern config show`, `tern version`.
//!
//! Exit codes: 0 success; 1 the node failed at run time (a port in use, an unwritable data
//! directory); 2 bad usage or bad configuration, with the reason on stderr.

use std::ffi::OsString;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};

use crate::config::{self, Config, Overrides};
use crate::{logging, node, passwd, shutdown};

const USAGE_ERROR: u8 = 2;
const RUNTIME_ERROR: u8 = 1;

#[derive(Debug, Parser)]
#[command(
    name = "tern",
    version,
    about = "Tern: a clustered MQTT broker",
    arg_required_else_help = true
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run a node (embedded defaults work as they are).
    Serve {
        #[command(flatten)]
        config: ConfigArgs,
        /// Print the effective configuration as TOML and exit.
        #[arg(long)]
        print_config: bool,
    },
    /// Hash a password for `[[auth.users]]` (argon2id, PHC string).
    Passwd {
        /// The password; without it, the first line of stdin is read. A password on
        /// the command line shows up in shell history and `ps`.
        #[arg(long)]
        password: Option<String>,
        /// Print a whole `[[auth.users]]` entry for this user instead of the hash alone.
        #[arg(long)]
        username: Option<String>,
    },
    /// Inspect the configuration.
    #[command(arg_required_else_help = true)]
    Config {
        #[command(subcommand)]
        command: ConfigCommand,
    },
    /// Load-test an MQTT broker (Tern or any other): fan-in, fan-out, pairs, shared.
    Bench(tern_bench::BenchArgs),
    /// Print the version.
    Version,
}

#[derive(Debug, Subcommand)]
pub enum ConfigCommand {
    /// Print the effective configuration (defaults, file, environment and flags merged)
    /// as TOML.
    Show {
        #[command(flatten)]
        config: ConfigArgs,
    },
}

/// Where the configuration comes from, besides the `TERN_...` environment.
#[derive(Clone, Debug, Default, Args)]
pub struct ConfigArgs {
    /// TOML config file (also `TERN_CONFIG`).
    #[arg(long, short = 'c', value_name = "PATH")]
    pub config: Option<PathBuf>,
    /// Set any key, e.g. `--set broker.max_packet_size=2048`; repeatable. The value is
    /// read as TOML if it is valid TOML, else as a string.
    #[arg(long = "set", value_name = "KEY=VALUE")]
    pub set: Vec<String>,
    /// Shorthand for `--set mqtt.listen=ADDR`.
    #[arg(long, value_name = "ADDR")]
    pub mqtt_listen: Option<String>,
    /// Shorthand for `--set http.listen=ADDR`.
    #[arg(long, value_name = "ADDR")]
    pub http_listen: Option<String>,
    /// Shorthand for `--set node.data_dir=PATH`.
    #[arg(long, value_name = "PATH")]
    pub data_dir: Option<String>,
    /// Shorthand for `--set log.level=FILTER`.
    #[arg(long, value_name = "FILTER")]
    pub log_level: Option<String>,
}

impl ConfigArgs {
    pub fn overrides(&self) -> Overrides {
        Overrides {
            config_file: self.config.clone(),
            set: self.set.clone(),
            mqtt_listen: self.mqtt_listen.clone(),
            http_listen: self.http_listen.clone(),
            data_dir: self.data_dir.clone(),
            log_level: self.log_level.clone(),
        }
    }
}

/// Runs the command line `args` (program name first) in the environment `env`.
pub fn run<A, T>(args: A, env: Vec<(String, String)>) -> ExitCode
where
    A: IntoIterator<Item = T>,
    T: Into<OsString> + Clone,
{
    let cli = match Cli::try_parse_from(args) {
        Ok(cli) => cli,
        Err(e) => {
            let _ = e.print();
            return ExitCode::from(u8::try_from(e.exit_code()).unwrap_or(USAGE_ERROR));
        }
    };
    match cli.command {
        Command::Version => {
            println!("tern {}", env!("CARGO_PKG_VERSION"));
            ExitCode::SUCCESS
        }
        Command::Passwd { password, username } => run_passwd(password, username.as_deref()),
        // The bench prints its own progress, summary and JSON; a failed run (QoS 1/2 loss,
        // a client that died) exits 1.
        Command::Bench(args) => match tern_bench::run_blocking(args) {
            Ok(_) => ExitCode::SUCCESS,
            Err(_) => ExitCode::FAILURE,
        },
        Command::Config {
            command: ConfigCommand::Show { config },
        } => match load(&config, env) {
            Ok(config) => print_config(&config),
            Err(code) => code,
        },
        Command::Serve {
            config,
            print_config: true,
        } => match load(&config, env) {
            Ok(config) => print_config(&config),
            Err(code) => code,
        },
        Command::Serve {
            config,
            print_config: false,
        } => {
            let rust_log = env
                .iter()
                .find(|(name, _)| name == "RUST_LOG")
                .map(|(_, value)| value.clone());
            match load(&config, env) {
                Ok(config) => serve(config, rust_log),
                Err(code) => code,
            }
        }
    }
}

fn load(args: &ConfigArgs, env: Vec<(String, String)>) -> Result<Config, ExitCode> {
    config::load(&args.overrides(), env).map_err(|e| {
        eprintln!("tern: configuration error: {e}");
        ExitCode::from(USAGE_ERROR)
    })
}

fn print_config(config: &Config) -> ExitCode {
    print!("{}", config.to_toml());
    ExitCode::SUCCESS
}

fn run_passwd(password: Option<String>, username: Option<&str>) -> ExitCode {
    match passwd::read_password(password) {
        Ok(password) => {
            let hash = tern_broker::auth::hash_password(&password);
            print!("{}", passwd::render(&hash, username));
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("tern passwd: {e}");
            ExitCode::from(USAGE_ERROR)
        }
    }
}

/// `tern serve`: start the node, run until SIGTERM or SIGINT, stop gracefully. A second
/// signal during the graceful stop ends the process at once.
fn serve(config: Config, rust_log: Option<String>) -> ExitCode {
    if let Err(e) = logging::init(&config.log, rust_log) {
        eprintln!("tern: {e}");
        return ExitCode::from(USAGE_ERROR);
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("tern-worker")
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("tern: cannot start the async runtime: {e}");
            return ExitCode::from(RUNTIME_ERROR);
        }
    };
    let code = runtime.block_on(async move {
        let mut signals = match shutdown::Signals::install() {
            Ok(signals) => signals,
            Err(e) => {
                tracing::error!(error = %e, "cannot install signal handlers");
                return ExitCode::from(RUNTIME_ERROR);
            }
        };
        tracing::info!(version = env!("CARGO_PKG_VERSION"), "starting tern");
        let node = match node::start(config).await {
            Ok(node) => node,
            Err(e) => {
                tracing::error!(error = %e, "cannot start");
                if !tracing::enabled!(tracing::Level::ERROR) {
                    eprintln!("tern: cannot start: {e}");
                }
                return ExitCode::from(if e.is_config_error() {
                    USAGE_ERROR
                } else {
                    RUNTIME_ERROR
                });
            }
        };
        let signal = signals.recv().await;
        tracing::info!(
            signal,
            "signal received; stopping gracefully (send it again to stop at once)"
        );
        tokio::select! {
            _ = node.shutdown() => ExitCode::SUCCESS,
            signal = signals.recv() => {
                tracing::warn!(signal, "second signal; exiting without waiting for clients");
                ExitCode::from(RUNTIME_ERROR)
            }
        }
    });
    runtime.shutdown_timeout(Duration::from_secs(1));
    code
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn cli_definition_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn no_arguments_prints_help() {
        let err = Cli::try_parse_from(["tern"]).unwrap_err();
        assert_eq!(
            err.kind(),
            clap::error::ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand
        );
    }

    #[test]
    fn serve_takes_every_config_flag() {
        let cli = Cli::try_parse_from([
            "tern",
            "serve",
            "-c",
            "/etc/tern.toml",
            "--set",
            "broker.maximum_qos=1",
            "--set",
            "log.format=json",
            "--mqtt-listen",
            "127.0.0.1:1884",
            "--http-listen",
            "127.0.0.1:9091",
            "--data-dir",
            "/var/lib/tern",
            "--log-level",
            "debug",
        ])
        .unwrap();
        let Command::Serve {
            config,
            print_config,
        } = cli.command
        else {
            panic!("not serve")
        };
        assert!(!print_config);
        let overrides = config.overrides();
        assert_eq!(overrides.config_file, Some(PathBuf::from("/etc/tern.toml")));
        assert_eq!(overrides.set, ["broker.maximum_qos=1", "log.format=json"]);
        let loaded = config::load(
            &Overrides {
                config_file: None,
                ..overrides
            },
            Vec::new(),
        )
        .unwrap();
        assert_eq!(loaded.broker.maximum_qos, 1);
        assert_eq!(loaded.mqtt.listen.to_string(), "127.0.0.1:1884");
        assert_eq!(loaded.http.listen.to_string(), "127.0.0.1:9091");
        assert_eq!(loaded.node.data_dir, PathBuf::from("/var/lib/tern"));
        assert_eq!(loaded.log.level, "debug");
    }

    #[test]
    fn config_show_and_print_config_parse() {
        let cli =
            Cli::try_parse_from(["tern", "config", "show", "--set", "mqtt.max_connections=5"])
                .unwrap();
        assert!(matches!(
            cli.command,
            Command::Config {
                command: ConfigCommand::Show { .. }
            }
        ));
        let cli = Cli::try_parse_from(["tern", "serve", "--print-config"]).unwrap();
        assert!(matches!(
            cli.command,
            Command::Serve {
                print_config: true,
                ..
            }
        ));
        assert!(Cli::try_parse_from(["tern", "config"]).is_err());
    }
}
