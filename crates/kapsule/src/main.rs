//! kapsule (and kap): parse, run, print the error once, exit non-zero on failure.

use clap::Parser;

fn main() {
    let cli = kapsule::cli::Cli::parse();
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build();
    let result = runtime
        .map_err(anyhow::Error::from)
        .and_then(|rt| rt.block_on(kapsule::run(cli)));
    if let Err(e) = result {
        eprintln!("{} {e:#}", console::style("error:").red().bold());
        std::process::exit(1);
    }
}
