//! The command line: `llmstack-server [FLAGS]` routes; `llmstack-server demo` runs a
//! self-contained demo.

use std::net::IpAddr;
use std::path::PathBuf;

use clap::{CommandFactory, FromArgMatches, Parser, Subcommand};

use crate::compat;
use crate::config::{ServerConfig, Settings};

/// llmstack-server: an OpenAI-compatible router for vLLM engines.
///
/// Flags follow production-stack's router (`vllm-router`) so deployments switch
/// without edits. Every flag can also come from `LLMSTACK_<FLAG>` or a YAML file.
#[derive(Debug, Parser)]
#[command(
    name = "llmstack-server",
    version,
    args_conflicts_with_subcommands = true
)]
pub struct Cli {
    /// What to run (default: the router).
    #[command(subcommand)]
    pub command: Option<Command>,
    /// YAML file with the same settings (keys are flag names with underscores).
    #[arg(long, env = "LLMSTACK_CONFIG")]
    pub config: Option<PathBuf>,
    /// Router settings.
    #[command(flatten)]
    pub settings: Settings,
}

/// Subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Simulated engines plus the router, on this machine, no GPU needed (build
    /// feature `demo`, on by default).
    Demo(DemoArgs),
}

/// What `main` should do.
#[derive(Debug)]
pub enum Action {
    /// Run the router.
    Serve(Box<ServerConfig>),
    /// Run the demo.
    Demo(DemoArgs),
}

/// Parses `args` (program name first). Returns the action and warnings to log, or the
/// error text (clap's own for `--help`/`--version`/syntax, ours for invalid settings).
pub fn parse(args: impl IntoIterator<Item = String>) -> Result<(Action, Vec<String>), clap::Error> {
    let matches = compat::add_flags(Cli::command()).try_get_matches_from(args)?;
    let warnings = compat::warnings(&matches);
    let cli = Cli::from_arg_matches(&matches)?;
    let invalid = |msg: String| Cli::command().error(clap::error::ErrorKind::ValueValidation, msg);
    match cli.command {
        Some(Command::Demo(args)) => Ok((Action::Demo(args), warnings)),
        None => {
            let file = match &cli.config {
                Some(path) => Settings::from_file(path).map_err(|e| invalid(e.to_string()))?,
                None => Settings::default(),
            };
            // The static list is re-read from the file when all of it came from there
            // (flags or the environment for any of its parts fix it).
            let from_file = cli.config.as_ref().filter(|_| {
                file.discovery.static_backends.is_some()
                    && !cli.settings.discovery.has_static_list()
            });
            let from_file = from_file.cloned();
            let mut config = file
                .overlay(cli.settings)
                .resolve()
                .map_err(|e| invalid(e.to_string()))?;
            config.discovery.static_file = from_file;
            Ok((Action::Serve(Box::new(config)), warnings))
        }
    }
}

/// Settings of the demo.
#[derive(Debug, Clone, clap::Args)]
pub struct DemoArgs {
    /// Router address.
    #[arg(long, default_value = "127.0.0.1")]
    pub host: IpAddr,
    /// Router port.
    #[arg(long, default_value_t = 8080)]
    pub port: u16,
    /// Number of simulated engines (spread over the models).
    #[arg(long, default_value_t = 4)]
    pub engines: usize,
    /// Comma-separated model names, one group of engines each.
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "meta-llama/Llama-3.1-8B-Instruct,Qwen/Qwen2.5-7B-Instruct"
    )]
    pub models: Vec<String>,
    /// Speed-up over the calibrated H100 timing (1 = as fast as a real H100 running
    /// Llama-3-8B).
    #[arg(long, default_value_t = 1.0)]
    pub speedup: f64,
}
