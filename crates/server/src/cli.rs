//! The command line: `tern serve`, `tern passwd`, `tern config show`, `tern cluster ...`,
//! `tern cert`, `tern bench`, `tern version`.
//!
//! Exit codes: 0 success; 1 the node failed at run time (a port in use, an unwritable data
//! directory); 2 bad usage or bad configuration, with the reason on stderr.

use std::ffi::OsString;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};

use crate::cluster_cmd::{self, Action};
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
    /// Inspect or change the cluster through a node's HTTP API.
    #[command(arg_required_else_help = true)]
    Cluster {
        #[command(subcommand)]
        command: ClusterCommand,
    },
    /// Write a cluster CA and node certificates for a local or test cluster.
    Cert {
        /// Directory to write `ca.pem`, `ca.key`, `node-<id>.pem` and `node-<id>.key` to.
        #[arg(long, value_name = "DIR")]
        dir: PathBuf,
        /// Node ids to issue certificates for, e.g. `0,1,2`.
        #[arg(long, value_name = "IDS", value_delimiter = ',', required = true)]
        nodes: Vec<u64>,
        /// Replace certificates already in DIR.
        #[arg(long)]
        force: bool,
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

#[derive(Debug, Subcommand)]
pub enum ClusterCommand {
    /// Show members, regions, roles, the leader, Raft progress and the links to peers.
    Status {
        #[command(flatten)]
        http: HttpArg,
        /// Print the status as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Make the node leave the cluster gracefully (clients move, routes are withdrawn).
    Leave {
        #[command(flatten)]
        http: HttpArg,
    },
    /// Remove another (typically dead) node from the cluster.
    Remove {
        /// The node id to remove.
        id: u64,
        #[command(flatten)]
        http: HttpArg,
    },
}

#[derive(Clone, Debug, Args)]
pub struct HttpArg {
    /// The node's HTTP address (`http.listen`).
    #[arg(long = "http", value_name = "ADDR", default_value = cluster_cmd::DEFAULT_HTTP)]
    pub addr: String,
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
    /// Shorthand for `--set cluster.enabled=true`.
    #[arg(long)]
    pub cluster: bool,
    /// Shorthand for `--set cluster.node_id=N`.
    #[arg(long, value_name = "N")]
    pub node_id: Option<String>,
    /// Shorthand for `--set cluster.listen=ADDR` (QUIC, UDP).
    #[arg(long, value_name = "ADDR")]
    pub cluster_listen: Option<String>,
    /// Shorthand for `--set cluster.advertise=HOST:PORT`.
    #[arg(long, value_name = "HOST:PORT")]
    pub advertise: Option<String>,
    /// Shorthand for `--set cluster.region=R`.
    #[arg(long, value_name = "R")]
    pub region: Option<String>,
    /// Shorthand for `cluster.seeds`: members to join through, comma-separated, each
    /// `ID@host:port` or a StatefulSet pod's `name-N...:port`.
    #[arg(long, value_name = "ID@HOST:PORT,...")]
    pub seeds: Option<String>,
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
            cluster: self.cluster,
            node_id: self.node_id.clone(),
            cluster_listen: self.cluster_listen.clone(),
            advertise: self.advertise.clone(),
            region: self.region.clone(),
            seeds: self.seeds.clone(),
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
        Command::Cluster { command } => match command {
            ClusterCommand::Status { http, json } => {
                cluster_cmd::run(&http.addr, Action::Status { json })
            }
            ClusterCommand::Leave { http } => cluster_cmd::run(&http.addr, Action::Leave),
            ClusterCommand::Remove { id, http } => {
                cluster_cmd::run(&http.addr, Action::Remove { id })
            }
        },
        Command::Cert { dir, nodes, force } => cluster_cmd::cert(&dir, &nodes, force),
        Command::Passwd { password, username } => run_passwd(password, username.as_deref()),
        // The bench prints its own progress, summary and JSON; a failed run (QoS 1/2 loss,
        // a client that died) exits 1.
        Command::Bench(args) => match tern_bench::run_blocking(args) {
            Ok(_) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("tern bench: {e}");
                ExitCode::FAILURE
            }
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
            let hostname = hostname(&env);
            match load(&config, env) {
                Ok(config) => serve(config, rust_log, hostname),
                Err(code) => code,
            }
        }
    }
}

/// The host name that names a clustered node without `cluster.node_id`: `HOSTNAME` (set
/// in every Kubernetes pod), else /etc/hostname, else empty.
fn hostname(env: &[(String, String)]) -> String {
    env.iter()
        .find(|(name, value)| name == "HOSTNAME" && !value.trim().is_empty())
        .map(|(_, value)| value.trim().to_string())
        .or_else(|| {
            std::fs::read_to_string("/etc/hostname")
                .ok()
                .map(|text| text.trim().to_string())
        })
        .unwrap_or_default()
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
fn serve(config: Config, rust_log: Option<String>, hostname: String) -> ExitCode {
    if let Err(e) = logging::init(&config.log, rust_log) {
        eprintln!("tern: {e}");
        return ExitCode::from(USAGE_ERROR);
    }
    let mut builder = tokio::runtime::Builder::new_multi_thread();
    builder.enable_all().thread_name("tern-worker");
    if config.node.worker_threads > 0 {
        builder.worker_threads(config.node.worker_threads);
    }
    let runtime = match builder.build() {
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
        tracing::info!(
            version = env!("CARGO_PKG_VERSION"),
            worker_threads = tokio::runtime::Handle::current().metrics().num_workers(),
            "starting tern"
        );
        let node = match node::start_on_host(config, &hostname).await {
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
    fn cluster_and_cert_commands_parse() {
        let cli = Cli::try_parse_from(["tern", "cluster", "status", "--json"]).unwrap();
        let Command::Cluster {
            command: ClusterCommand::Status { http, json },
        } = cli.command
        else {
            panic!("not cluster status")
        };
        assert_eq!(
            (http.addr.as_str(), json),
            (cluster_cmd::DEFAULT_HTTP, true)
        );
        let cli = Cli::try_parse_from(["tern", "cluster", "remove", "4", "--http", "h:1"]).unwrap();
        assert!(matches!(
            cli.command,
            Command::Cluster {
                command: ClusterCommand::Remove { id: 4, .. }
            }
        ));
        assert!(Cli::try_parse_from(["tern", "cluster", "remove", "x"]).is_err());
        let cli = Cli::try_parse_from(["tern", "cert", "--dir", "d", "--nodes", "0,1,2"]).unwrap();
        let Command::Cert { nodes, force, .. } = cli.command else {
            panic!("not cert")
        };
        assert_eq!((nodes, force), (vec![0, 1, 2], false));
        assert!(Cli::try_parse_from(["tern", "cert", "--dir", "d"]).is_err());

        let cli = Cli::try_parse_from([
            "tern",
            "serve",
            "--cluster",
            "--node-id",
            "1",
            "--seeds",
            "a:1,b:2",
            "--region",
            "eu",
        ])
        .unwrap();
        let Command::Serve { config, .. } = cli.command else {
            panic!("not serve")
        };
        let overrides = config.overrides();
        assert!(overrides.cluster);
        assert_eq!(overrides.seeds.as_deref(), Some("a:1,b:2"));
    }

    #[test]
    fn hostname_comes_from_the_environment_first() {
        let env = vec![("HOSTNAME".to_string(), "tern-2\n".to_string())];
        assert_eq!(hostname(&env), "tern-2");
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
