//! kapsule-daemon: parse, log, serve, report the error chain once.

use clap::Parser;

/// Serves org.kde.kapsule: Kapsule containers on Incus.
#[derive(Parser, Debug)]
#[command(version, about)]
struct Args {
    /// Serve on the session bus (development).
    #[arg(long, conflicts_with = "address")]
    session: bool,
    /// Serve on the bus at this D-Bus address (tests).
    #[arg(long, value_name = "ADDRESS")]
    address: Option<String>,
    /// The kapsule-nsenter helper (default: next to this program, else
    /// /usr/lib/kapsule/kapsule-nsenter).
    #[arg(long, value_name = "PATH", env = "KAPSULE_NSENTER")]
    nsenter: Option<std::path::PathBuf>,
    /// The NVIDIA mount hook (default: next to this program, else
    /// /usr/lib/kapsule/kapsule-nvidia-hook).
    #[arg(long, value_name = "PATH", env = "KAPSULE_NVIDIA_HOOK")]
    nvidia_hook: Option<std::path::PathBuf>,
    /// The network namespace containers share (default: the host's, /proc/self/ns/net as
    /// incusd sees it). For tests that must not touch the machine's network.
    #[arg(long, value_name = "PATH", env = "KAPSULE_NETWORK_NAMESPACE")]
    network_namespace: Option<std::path::PathBuf>,
    /// More log output (repeat for even more).
    #[arg(short, long, action = clap::ArgAction::Count)]
    verbose: u8,
}

fn main() {
    let args = Args::parse();
    init_logging(args.verbose);
    let settings = kapsule_daemon::Settings {
        nsenter: args.nsenter,
        nvidia_hook: args.nvidia_hook,
        network_namespace: args.network_namespace,
    };
    let bus = match (args.session, args.address) {
        (_, Some(address)) => kapsule_daemon::Bus::Address(address),
        (true, None) => kapsule_daemon::Bus::Session,
        (false, None) => kapsule_daemon::Bus::System,
    };
    // Files the daemon opens on a caller's behalf are opened with the caller's file-system uid
    // and gid; root's supplementary groups must not open anything on top. The daemon needs none,
    // so they go now, while there is only one thread.
    if nix::unistd::Uid::effective().is_root()
        && let Err(e) = nix::unistd::setgroups(&[])
    {
        log::error!("cannot drop supplementary groups: {e}");
        std::process::exit(1);
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build();
    let result = runtime
        .map_err(anyhow::Error::from)
        .and_then(|rt| rt.block_on(kapsule_daemon::run(bus, settings)));
    if let Err(e) = result {
        log::error!("{e:#}");
        std::process::exit(1);
    }
}

/// The journal when started by systemd, stderr otherwise; no timestamps (the journal has them).
fn init_logging(verbose: u8) {
    let level = match verbose {
        0 => log::LevelFilter::Info,
        1 => log::LevelFilter::Debug,
        _ => log::LevelFilter::Trace,
    };
    if systemd_journal_logger::connected_to_journal()
        && let Ok(logger) = systemd_journal_logger::JournalLog::new()
        && logger.install().is_ok()
    {
        log::set_max_level(level);
        return;
    }
    env_logger::Builder::new()
        .filter_level(level)
        .parse_default_env()
        .format_timestamp(None)
        .init();
}
