//! `llmstack-server`: parse the command line, start the router (or the demo), wait for
//! SIGTERM/SIGINT, drain, exit.

use std::process::ExitCode;

use llmstack_server::{Action, parse};
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Layer};

/// mimalloc instead of the C library's allocator: fewer instructions per allocation on
/// the request path, and memory freed after a burst goes back to the system (glibc's
/// per-thread arenas keep it). Built without transparent huge pages (`no_thp`): with
/// them, its arenas are ~11 MB resident before the first request.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

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
    runtime.block_on(async move {
        // Inside the runtime: the OpenTelemetry exporter runs on it.
        #[cfg(feature = "otel")]
        let guard = match init_logging(&action) {
            Ok(guard) => guard,
            Err(e) => {
                eprintln!("llmstack-server: {e}");
                return ExitCode::FAILURE;
            }
        };
        #[cfg(not(feature = "otel"))]
        if let Err(e) = init_logging(&action) {
            eprintln!("llmstack-server: {e}");
            return ExitCode::FAILURE;
        }
        for warning in warnings {
            tracing::warn!("{warning}");
        }
        // Every client connection and engine connection is a file descriptor: take the
        // hard limit (the soft one is often 1024).
        match rlimit::increase_nofile_limit(u64::MAX) {
            Ok(n) => tracing::debug!(nofile = n, "file-descriptor limit raised to the hard limit"),
            Err(e) => tracing::warn!(error = %e, "cannot raise the file-descriptor limit"),
        }
        let code = run(action).await;
        #[cfg(feature = "otel")]
        if let Some(guard) = guard {
            guard.shutdown().await;
        }
        code
    })
}

#[cfg(feature = "otel")]
type TelemetryGuard = Option<llmstack_server::otel::OtelGuard>;
#[cfg(not(feature = "otel"))]
type TelemetryGuard = ();

/// Logs (text or JSON lines) filtered by the log level, plus span export when configured.
fn init_logging(action: &Action) -> Result<TelemetryGuard, Box<dyn std::error::Error>> {
    let (filter, json) = match action {
        Action::Serve(config) => (config.log_filter.clone(), config.log_json),
        Action::Demo(_) => ("info".into(), false),
    };
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(filter));
    let fmt = if json {
        tracing_subscriber::fmt::layer()
            .json()
            .with_filter(filter)
            .boxed()
    } else {
        tracing_subscriber::fmt::layer().with_filter(filter).boxed()
    };
    let registry = tracing_subscriber::registry().with(fmt);
    #[cfg(feature = "otel")]
    if let Action::Serve(config) = action
        && let Some(otel) = &config.otel
    {
        let (layer, guard) =
            llmstack_server::otel::layer(otel).map_err(|e| format!("OTLP exporter: {e}"))?;
        registry.with(layer).init();
        return Ok(Some(guard));
    }
    registry.init();
    #[cfg(feature = "otel")]
    return Ok(None);
    #[cfg(not(feature = "otel"))]
    Ok(())
}

async fn run(action: Action) -> ExitCode {
    // The demo's engines, kept alive while the router serves.
    type Engines = Option<Box<dyn std::any::Any>>;
    let started: Result<(llmstack_server::Server, Engines), String> = match action {
        Action::Serve(config) => llmstack_server::Server::start(*config)
            .await
            .map(|server| (server, None))
            .map_err(|e| e.to_string()),
        #[cfg(feature = "demo")]
        Action::Demo(args) => llmstack_server::demo::start(&args).await.map_err(|e| e.to_string()).map(|d| {
            println!("{}", llmstack_server::demo::banner(&d, &args));
            let engines: Box<dyn std::any::Any> = Box::new(d.cluster);
            (d.server, Some(engines))
        }),
        #[cfg(not(feature = "demo"))]
        Action::Demo(_) => Err(
            "this llmstack-server was built without the `demo` feature (cargo build --features demo)".into(),
        ),
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
