//! kapsule (and kap): parse, run, print the error once, exit non-zero on failure. `enter` exits
//! as its session did: with the command's code, or killed by the same signal.

use clap::Parser;
use kapsule_dbus::session::Status;

fn main() {
    let cli = kapsule::cli::Cli::parse();
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build();
    let result = runtime
        .map_err(anyhow::Error::from)
        .and_then(|rt| rt.block_on(kapsule::run(cli)));
    match result {
        Ok(None) => {}
        Ok(Some(Status::Exited(code))) => std::process::exit(code),
        Ok(Some(Status::Killed(signal))) => {
            kapsule_sys::reset_and_raise(signal);
            // A signal whose default is not to end a process: the shell convention.
            std::process::exit(128 + signal);
        }
        Err(e) => {
            eprintln!("{} {e:#}", console::style("error:").red().bold());
            std::process::exit(1);
        }
    }
}
