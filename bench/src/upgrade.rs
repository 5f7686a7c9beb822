//! `kapsule upgrade --all` of three containers against three `kapsule upgrade NAME` runs one
//! after another (issue: "everyday distrobox habits"). The containers are the bench user's own,
//! so `--all` is exactly these three; each one's apt reads the tests' `file:` repository (no
//! network), and every container is up to date: what is timed is a whole pass (the CLI, the
//! daemon, `apt-get update` and a `full-upgrade` with nothing to do), not a package download.
//! On the `dir` pool no snapshot is taken first.

use std::process::Command;
use std::time::Duration;

use anyhow::Result;
use kapsule_integration_tests::apt::repository;
use kapsule_integration_tests::{InstanceGuard, TestUser};

use crate::{Row, time_once};

/// The two ways, `trials` times, alternating which goes first, after one warm-up pass each.
pub(crate) fn upgrade(
    rt: &tokio::runtime::Runtime,
    kapsule: &std::path::Path,
    bus: &str,
    user: &TestUser,
    incus: &kapsule_incus::Client,
    image: &str,
    trials: usize,
) -> Result<Vec<Row>> {
    let prefix = format!("kb-up{}", std::process::id());
    let packages = tempfile::tempdir_in("/tmp")?;
    let repo = repository(packages.path(), "1.0");
    let names: Vec<String> = (0..3).map(|i| format!("{prefix}-{i}")).collect();
    let _guards: Vec<InstanceGuard> = names.iter().map(|n| InstanceGuard(n.clone())).collect();
    let as_user = |args: &[&str]| -> Command { crate::as_user(user, kapsule, bus, args) };
    for name in &names {
        let image = format!("local:{image}");
        time_once(&mut as_user(&["create", name, "--image", &image, "--no-menu-entry"]))?;
        let source = format!(
            "rm -f /etc/apt/sources.list /etc/apt/sources.list.d/*; \
             echo 'deb [trusted=yes] file:/.kapsule/host{} ./' > /etc/apt/sources.list.d/kt.list",
            repo.display()
        );
        let (code, out) = rt.block_on(kapsule_integration_tests::sh(incus, name, &source));
        anyhow::ensure!(code == 0, "{name}: {out}");
    }
    let all = || time_once(&mut as_user(&["upgrade", "--all"]));
    let one_by_one = || -> Result<Duration> {
        let mut total = Duration::ZERO;
        for name in &names {
            total += time_once(&mut as_user(&["upgrade", name]))?;
        }
        Ok(total)
    };
    all()?;
    one_by_one()?;
    let (mut together, mut apart) = (Vec::new(), Vec::new());
    for trial in 0..trials {
        if trial % 2 == 0 {
            together.push(all()?);
            apart.push(one_by_one()?);
        } else {
            apart.push(one_by_one()?);
            together.push(all()?);
        }
    }
    let floor = "3 x kapsule upgrade NAME, one after another";
    Ok(vec![
        Row::new("kapsule upgrade --all (3 containers)", &together, Some((floor, &apart))),
        Row::new(floor, &apart, None),
    ])
}
