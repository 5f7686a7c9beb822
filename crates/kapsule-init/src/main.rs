//! kapsule-init: parse, log, initialize, report the error once.

use std::path::PathBuf;
use std::time::Duration;

use clap::Parser;

/// Prepares Incus for Kapsule on a fresh system: waits for it, creates the storage pool if there
/// is none, imports the images bundled with Kapsule. Run once at first boot by
/// kapsule-init.service; safe to run again: what exists is kept.
#[derive(Parser, Debug)]
#[command(version, about)]
struct Args {
    /// Run even if the stamp says it was done.
    #[arg(long)]
    force: bool,
    /// The stamp written when every step succeeded.
    #[arg(long, value_name = "PATH", default_value = kapsule_init::STAMP)]
    stamp: PathBuf,
    /// The bundled images, one directory per alias holding the metadata and rootfs files.
    #[arg(long, value_name = "DIR", default_value = kapsule_init::IMAGES)]
    images_dir: PathBuf,
    /// The storage pool to create if missing.
    #[arg(long, value_name = "NAME", default_value = kapsule_init::POOL)]
    pool: String,
    /// Where a new pool keeps its data (default: <incus dir>/storage-pools/<pool>); btrfs there
    /// makes a btrfs pool, anything else a dir pool.
    #[arg(long, value_name = "DIR")]
    storage: Option<PathBuf>,
    /// How long to wait for Incus, in seconds.
    #[arg(long, value_name = "SECONDS", default_value_t = 300)]
    wait: u64,
    /// Only give root its range of subordinate ids where it has none, in `subuid` and `subgid`
    /// of `--subid-dir`, for unprivileged containers, and exit: run before Incus starts (a
    /// drop-in of incus.service), which reads them then. Nothing else is done; no stamp.
    #[arg(long)]
    subids: bool,
    /// Where `subuid` and `subgid` are.
    #[arg(long, value_name = "DIR", default_value = "/etc")]
    subid_dir: PathBuf,
    /// More log output.
    #[arg(short, long)]
    verbose: bool,
}

fn main() {
    let args = Args::parse();
    init_logging(args.verbose);
    if args.subids {
        if let Err(e) = give_root_subids(&args.subid_dir) {
            log::error!("{e}; unprivileged containers will not start until root has a range");
            std::process::exit(1);
        }
        return;
    }
    let options = kapsule_init::Options {
        stamp: args.stamp,
        images: args.images_dir,
        pool: args.pool,
        storage: args.storage,
        wait: Duration::from_secs(args.wait),
        force: args.force,
    };
    let incus = kapsule_incus::Client::from_env();
    let result = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(anyhow::Error::from)
        .and_then(|rt| {
            rt.block_on(kapsule_init::run(&incus, &options))
                .map_err(anyhow::Error::from)
        });
    if let Err(e) = result {
        log::error!("{e}; nothing is marked done, so the next boot (or kapsule-init) tries again");
        std::process::exit(1);
    }
}

/// Root's range of subordinate uids and gids, where it has none (`kapsule-subids`).
fn give_root_subids(dir: &std::path::Path) -> std::io::Result<()> {
    for file in ["subuid", "subgid"] {
        let path = dir.join(file);
        match kapsule_subids::give_root_range(&path)? {
            Some((start, count)) => log::info!("gave root {count} ids from {start} in {}", path.display()),
            None => log::debug!("root has a range in {} already", path.display()),
        }
    }
    Ok(())
}

/// The journal when started by systemd, stderr otherwise.
fn init_logging(verbose: bool) {
    let level = if verbose {
        log::LevelFilter::Debug
    } else {
        log::LevelFilter::Info
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
        .format_timestamp(None)
        .format_target(false)
        .init();
}
