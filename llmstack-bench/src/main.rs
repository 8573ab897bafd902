//! `llmstack-bench`: drive an OpenAI-compatible endpoint with a workload and print
//! TTFT / ITL / e2e percentiles (and JSON with `--json`).

use std::process::ExitCode;

use clap::{Parser, ValueEnum};
use llmstack_bench::{Arrivals, Client, RunConfig, Workload, engine_counters, read_trace, run};

/// Load generator for OpenAI-compatible LLM endpoints.
#[derive(Debug, Parser)]
#[command(
    name = "llmstack-bench",
    version,
    args_conflicts_with_subcommands = true
)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    #[command(flatten)]
    args: Args,
}

#[derive(Debug, clap::Subcommand)]
enum Command {
    /// Draw TTFT (p50, p99) against offered load from JSON reports, one line per label.
    Chart {
        /// The SVG file to write.
        #[arg(long)]
        out: std::path::PathBuf,
        /// JSON reports (from `--json`).
        reports: Vec<std::path::PathBuf>,
    },
}

#[derive(Debug, clap::Args)]
struct Args {
    /// Base URL of the endpoint (router, vLLM, simulator…).
    #[arg(long, default_value = "http://127.0.0.1:8080")]
    url: String,
    /// Model name to ask for (required to run a workload).
    #[arg(long)]
    model: Option<String>,
    /// A label for this run in tables and charts.
    #[arg(long)]
    label: Option<String>,
    /// Workload shape.
    #[arg(long, value_enum, default_value_t = Shape::Synthetic)]
    workload: Shape,
    /// Seed of every random choice.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Closed loop: requests in flight at once.
    #[arg(long, default_value_t = 16)]
    concurrency: usize,
    /// Closed and open loop: total requests.
    #[arg(long, default_value_t = 1000)]
    requests: usize,
    /// Closed loop: stop starting requests after this many seconds (with --requests as
    /// an upper bound); open loop: send `qps × seconds` requests.
    #[arg(long)]
    duration: Option<f64>,
    /// Prompt length in words (synthetic), or the suffix length (shared-prefix).
    #[arg(long, default_value_t = 128)]
    prompt_tokens: usize,
    /// Answer length (`max_tokens`).
    #[arg(long, default_value_t = 16)]
    answer_tokens: usize,
    /// shared-prefix: number of prefix groups.
    #[arg(long, default_value_t = 8)]
    groups: usize,
    /// shared-prefix: distinct suffixes per group.
    #[arg(long, default_value_t = 16)]
    suffixes: usize,
    /// shared-prefix: prefix length; multi-round-qa: shared system prompt length.
    #[arg(long, default_value_t = 1000)]
    prefix_tokens: usize,
    /// multi-round-qa: users.
    #[arg(long, default_value_t = 16)]
    users: usize,
    /// multi-round-qa: rounds per user.
    #[arg(long, default_value_t = 5)]
    rounds: usize,
    /// multi-round-qa: per-user history length.
    #[arg(long, default_value_t = 2000)]
    history_tokens: usize,
    /// multi-round-qa: total requests per second over all users; open loop: the rate.
    #[arg(long, default_value_t = 2.0)]
    qps: f64,
    /// How requests are released: a closed loop at `--concurrency`, or open-loop
    /// arrivals at `--qps` (constant gaps or a Poisson process).
    #[arg(long, value_enum, default_value_t = ArrivalKind::Closed)]
    arrivals: ArrivalKind,
    /// replay: the JSONL trace to replay (`timestamp`, `prompt` or `messages`,
    /// `max_tokens`, optional `session`).
    #[arg(long)]
    trace: Option<std::path::PathBuf>,
    /// Send non-streaming requests (overhead tests).
    #[arg(long)]
    no_stream: bool,
    /// Engine base URLs whose /metrics are read before and after the run (comma list):
    /// the report then shows their prefix-cache hit rate and preemptions over the run.
    #[arg(long, value_delimiter = ',')]
    engine_metrics: Vec<String>,
    /// Print the report as a Markdown table (header and one row labelled LABEL).
    #[arg(long, value_name = "LABEL")]
    markdown: Option<String>,
    /// Print the report as JSON instead of text.
    #[arg(long)]
    json: bool,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum ArrivalKind {
    Closed,
    Constant,
    Poisson,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum Shape {
    Synthetic,
    SharedPrefix,
    MultiRoundQa,
    Replay,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    if let Some(Command::Chart { out, reports }) = cli.command {
        return chart(&out, &reports);
    }
    let args = cli.args;
    let Some(model) = args.model.clone() else {
        eprintln!("llmstack-bench: --model is required");
        return ExitCode::from(2);
    };
    let workload = match args.workload {
        Shape::Synthetic => Workload::Synthetic {
            prompt_tokens: args.prompt_tokens,
            answer_tokens: args.answer_tokens,
        },
        Shape::SharedPrefix => Workload::SharedPrefix {
            groups: args.groups,
            suffixes: args.suffixes,
            prefix_tokens: args.prefix_tokens,
            suffix_tokens: args.prompt_tokens,
            answer_tokens: args.answer_tokens,
        },
        Shape::Replay => {
            let Some(path) = &args.trace else {
                eprintln!("llmstack-bench: --workload replay needs --trace FILE");
                return ExitCode::from(2);
            };
            let trace = std::fs::read_to_string(path)
                .map_err(|e| format!("{}: {e}", path.display()))
                .and_then(|text| read_trace(&text).map_err(|e| e.to_string()));
            match trace {
                Ok(trace) => Workload::Replay(trace.into()),
                Err(e) => {
                    eprintln!("llmstack-bench: {e}");
                    return ExitCode::from(2);
                }
            }
        }
        Shape::MultiRoundQa => Workload::MultiRoundQa {
            users: args.users,
            rounds: args.rounds,
            system_tokens: args.prefix_tokens,
            history_tokens: args.history_tokens,
            answer_tokens: args.answer_tokens,
        },
    };
    let config = RunConfig {
        workload,
        seed: args.seed,
        concurrency: args.concurrency,
        requests: args.requests,
        qps: args.qps,
        arrivals: match args.arrivals {
            ArrivalKind::Closed => Arrivals::Closed,
            ArrivalKind::Constant => Arrivals::Constant,
            ArrivalKind::Poisson => Arrivals::Poisson,
        },
        progress: true,
        duration: None,
    };
    let mut config = config;
    if let Some(secs) = args.duration {
        if !(secs.is_finite() && secs > 0.0 && secs < 1e7) {
            eprintln!("llmstack-bench: --duration must be a positive number of seconds");
            return ExitCode::from(2);
        }
        match config.arrivals {
            Arrivals::Closed => {
                config.duration = Some(std::time::Duration::from_secs_f64(secs));
                config.requests = usize::MAX;
            }
            Arrivals::Constant | Arrivals::Poisson => {
                config.requests = (secs * args.qps).ceil() as usize
            }
        }
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let report = runtime.block_on(async {
        let client = Client::new(&args.url, &model, !args.no_stream);
        if args.engine_metrics.is_empty() {
            return Ok(run(&client, &config).await);
        }
        let before = engine_counters(&client, &args.engine_metrics).await?;
        let mut report = run(&client, &config).await;
        let after = engine_counters(&client, &args.engine_metrics).await?;
        report.engines = Some(before.delta(&after));
        Ok::<_, llmstack_bench::GetError>(report)
    });
    let mut report = match report {
        Ok(report) => report,
        Err(e) => {
            eprintln!("llmstack-bench: {e}");
            return ExitCode::FAILURE;
        }
    };
    report.label = args.label.clone();
    report.target_qps = match (&config.workload, config.arrivals) {
        (Workload::MultiRoundQa { .. }, _) | (_, Arrivals::Constant | Arrivals::Poisson) => {
            Some(args.qps)
        }
        _ => None,
    };
    if args.json {
        match serde_json::to_string_pretty(&report) {
            Ok(text) => println!("{text}"),
            Err(e) => {
                eprintln!("cannot write the report: {e}");
                return ExitCode::FAILURE;
            }
        }
    } else if let Some(label) = &args.markdown {
        println!(
            "{}\n{}",
            llmstack_bench::Report::MARKDOWN_HEADER,
            report.markdown_row(label)
        );
    } else {
        println!("{}", report.human());
    }
    if report.ok == 0 {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}

/// `llmstack-bench chart`: reads JSON reports, writes the SVG.
fn chart(out: &std::path::Path, paths: &[std::path::PathBuf]) -> ExitCode {
    let mut reports = Vec::new();
    for path in paths {
        let parsed = std::fs::read_to_string(path)
            .map_err(|e| e.to_string())
            .and_then(|t| {
                serde_json::from_str::<llmstack_bench::Report>(&t).map_err(|e| e.to_string())
            });
        match parsed {
            Ok(r) => reports.push(r),
            Err(e) => {
                eprintln!("llmstack-bench: {}: {e}", path.display());
                return ExitCode::from(2);
            }
        }
    }
    let svg = match llmstack_bench::ttft_chart(&reports) {
        Ok(svg) => svg,
        Err(e) => {
            eprintln!("llmstack-bench: {e}");
            return ExitCode::FAILURE;
        }
    };
    match std::fs::write(out, svg) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("llmstack-bench: {e}");
            ExitCode::FAILURE
        }
    }
}
