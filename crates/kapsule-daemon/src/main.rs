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
    /// The kapsule-mounts helper (default: next to this program, else
    /// /usr/lib/kapsule/kapsule-mounts).
    #[arg(long, value_name = "PATH", env = "KAPSULE_MOUNTS")]
    mounts: Option<std::path::PathBuf>,
    /// The NVIDIA mount hook (default: next to this program, else
    /// /usr/lib/kapsule/kapsule-nvidia-hook).
    #[arg(long, value_name = "PATH", env = "KAPSULE_NVIDIA_HOOK")]
    nvidia_hook: Option<std::path::PathBuf>,
    /// The static kapsule-host-exec placed in containers (default: next to this program, else
    /// /usr/lib/kapsule/kapsule-host-exec).
    #[arg(long, value_name = "PATH", env = "KAPSULE_HOST_EXEC")]
    host_exec: Option<std::path::PathBuf>,
    /// The network namespace containers share (default: the host's, /proc/self/ns/net as
    /// incusd sees it). For tests that must not touch the machine's network.
    #[arg(long, value_name = "PATH", env = "KAPSULE_NETWORK_NAMESPACE")]
    network_namespace: Option<std::path::PathBuf>,
    /// The Incus storage pool new containers' root disks are made in (default: `default`, the
    /// pool kapsule-init makes).
    #[arg(long, value_name = "NAME", env = "KAPSULE_STORAGE_POOL")]
    storage_pool: Option<String>,
    /// Also serve peer-to-peer D-Bus on a Unix socket bound at this path (tests, development;
    /// under systemd, kapsule-daemon.socket passes the socket instead). A stale socket there is
    /// replaced; anything else there is an error.
    #[arg(long, value_name = "PATH")]
    socket: Option<std::path::PathBuf>,
    /// Exit after this many seconds with no call, operation, session or socket client (the
    /// unit uses this: the daemon is started again on demand). Default: never.
    #[arg(long, value_name = "SECONDS", value_parser = clap::value_parser!(u64).range(1..))]
    idle_exit: Option<u64>,
    /// Drop a client of the socket that has sent nothing for this many seconds and has no
    /// operation running (a command waiting for its operation is not idle; one that only holds
    /// a session open does not need the connection). It keeps nobody's daemon running then.
    #[arg(long, value_name = "SECONDS", default_value_t = 300, value_parser = clap::value_parser!(u64).range(1..))]
    client_idle: u64,
    /// More log output (repeat for even more).
    #[arg(short, long, action = clap::ArgAction::Count)]
    verbose: u8,
}

fn main() {
    // First, while there is one thread: libsystemd takes $LISTEN_FDS out of the environment.
    let passed = kapsule_sys::listen_sockets();
    let args = Args::parse();
    init_logging(args.verbose);
    let mut sockets = match passed {
        Ok(sockets) => sockets,
        Err(e) => {
            log::error!("cannot take the sockets systemd passed: {e}");
            std::process::exit(1);
        }
    };
    if let Some(path) = &args.socket {
        match bind(path) {
            Ok(socket) => sockets.push(socket),
            Err(e) => {
                log::error!("cannot listen on {}: {e}", path.display());
                std::process::exit(1);
            }
        }
    }
    let service = kapsule_daemon::Service {
        sockets,
        idle_exit: args.idle_exit.map(std::time::Duration::from_secs),
        client_idle: std::time::Duration::from_secs(args.client_idle),
    };
    let settings = kapsule_daemon::Settings {
        nsenter: args.nsenter,
        mounts: args.mounts,
        host_sync: kapsule_daemon::HostSync::Host,
        nvidia_hook: args.nvidia_hook,
        host_exec: args.host_exec,
        network_namespace: args.network_namespace,
        config_files: None,
        incus_cache: None,
        storage_pool: args.storage_pool,
        subid_dir: None,
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
        // Blocking work (file access in containers, helpers' replies) queues past this rather
        // than taking the threads of the unit's TasksMax= (tokio's default is 512).
        .max_blocking_threads(64)
        .enable_all()
        .build();
    let result = runtime
        .map_err(anyhow::Error::from)
        .and_then(|rt| rt.block_on(kapsule_daemon::run(bus, settings, service)));
    if let Err(e) = result {
        log::error!("{e:#}");
        std::process::exit(1);
    }
}

/// A socket at `path` that every user may connect to, as kapsule-daemon.socket makes it. A
/// socket left by a daemon that ended is replaced; any other file is kept, and is an error.
fn bind(path: &std::path::Path) -> std::io::Result<std::os::unix::net::UnixListener> {
    use std::os::unix::fs::{FileTypeExt, PermissionsExt};
    match std::fs::symlink_metadata(path) {
        Ok(meta) if meta.file_type().is_socket() => std::fs::remove_file(path)?,
        Ok(_) => {
            return Err(std::io::Error::new(
                std::io::ErrorKind::AlreadyExists,
                "a file that is not a socket is there",
            ));
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    let socket = std::os::unix::net::UnixListener::bind(path)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o666))?;
    Ok(socket)
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
