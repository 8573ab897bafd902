//! `llmstack-sim`: serve simulated vLLM engines. See `llmstack-sim --help`.

fn main() -> std::process::ExitCode {
    llmstack_sim::cli::main()
}
