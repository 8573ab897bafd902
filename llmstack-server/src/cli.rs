//! The command line: `llmstack-server [FLAGS]` routes; `llmstack-server demo` runs a
//! self-contained demo.

use std::net::IpAddr;
use std::path::PathBuf;

use clap::{CommandFactory, FromArgMatches, Parser, Subcommand};

use crate::compat;
use crate::config::{DynamicConfig, ServerConfig, Settings};

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
    /// production-stack's dynamic configuration: a YAML settings file (as --config, in
    /// production-stack's forms too) read at start and re-read when it changes; a change
    /// of the routing logic, session key, aliases or static engines applies without a
    /// restart (flags and environment still win). /health shows the settings in force.
    #[arg(long, env = "LLMSTACK_DYNAMIC_CONFIG_YAML", conflicts_with_all = ["config", "dynamic_config_json"])]
    pub dynamic_config_yaml: Option<PathBuf>,
    /// --dynamic-config-yaml for a JSON file.
    #[arg(long, env = "LLMSTACK_DYNAMIC_CONFIG_JSON", conflicts_with = "config")]
    pub dynamic_config_json: Option<PathBuf>,
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
    let invalid = |msg: String| Cli::command().error(clap::error::ErrorKind::ValueValidation, msg);
    let mut warnings = compat::check(&matches).map_err(invalid)?;
    let cli = Cli::from_arg_matches(&matches)?;
    match cli.command {
        Some(Command::Demo(args)) => Ok((Action::Demo(args), warnings)),
        None => {
            let dynamic = cli.dynamic_config_yaml.or(cli.dynamic_config_json);
            let path = cli.config.or_else(|| dynamic.clone());
            let file = match &path {
                Some(path) => {
                    let file = Settings::read(path).map_err(|e| invalid(e.to_string()))?;
                    warnings.extend(file.notes);
                    file.settings
                }
                None => Settings::default(),
            };
            // The static list is re-read from the file when all of it came from there
            // (flags or the environment for any of its parts fix it).
            let from_file = path.filter(|_| {
                file.discovery.static_backends.is_some()
                    && !cli.settings.discovery.has_static_list()
            });
            let flags = cli.settings.clone();
            let mut config = file
                .overlay(cli.settings)
                .resolve()
                .map_err(|e| invalid(e.to_string()))?;
            config.discovery.static_file = from_file;
            config.dynamic = dynamic.map(|path| DynamicConfig {
                path,
                flags: Box::new(flags),
            });
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
