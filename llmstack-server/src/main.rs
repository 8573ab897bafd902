//! `llmstack-server`: parse the command line, start the router (or the demo), wait for
//! SIGTERM/SIGINT, drain, exit.

use std::process::ExitCode;

use llmstack_server::{Action, demo, parse};
use tracing_subscriber::EnvFilter;

fn main() -> ExitCode {
    let (action, warnings) = match parse(std::env::args()) {
        Ok(parsed) => parsed,
        Err(e) => {
            // Prints help/version to stdout, errors to stderr.
            let _printed = e.print();
            return if e.use_stderr() {
                ExitCode::from(2)
            } else {
                ExitCode::SUCCESS
            };
        }
    };
    let (filter, json) = match &action {
        Action::Serve(config) => (config.log_filter.clone(), config.log_json),
        Action::Demo(_) => ("info".into(), false),
    };
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(filter));
    if json {
        tracing_subscriber::fmt()
            .json()
            .with_env_filter(filter)
            .init();
    } else {
        tracing_subscriber::fmt().with_env_filter(filter).init();
    }
    for warning in warnings {
        tracing::warn!("{warning}");
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
    runtime.block_on(run(action))
}

async fn run(action: Action) -> ExitCode {
    let started = match action {
        Action::Serve(config) => llmstack_server::Server::start(*config)
            .await
            .map(|server| (server, None))
            .map_err(|e| e.to_string()),
        Action::Demo(args) => demo::start(&args).await.map(|d| {
            println!("{}", demo::banner(&d, &args));
            (d.server, Some(d.cluster))
        }),
    };
    let (server, _engines) = match started {
        Ok(started) => started,
        Err(e) => {
            eprintln!("llmstack-server: {e}");
            return ExitCode::FAILURE;
        }
    };
    shutdown_signal().await;
    server.shutdown();
    server.wait().await;
    ExitCode::SUCCESS
}

/// Resolves on SIGINT (Ctrl-C) or SIGTERM.
async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term = match tokio::signal::unix::signal(
            tokio::signal::unix::SignalKind::terminate(),
        ) {
            Ok(term) => term,
            Err(e) => {
                tracing::warn!(error = %e, "cannot watch SIGTERM; only Ctrl-C stops the router");
                let _ctrl_c = ctrl_c.await;
                return;
            }
        };
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    {
        let _ctrl_c = ctrl_c.await;
    }
    tracing::info!("signal received");
}
