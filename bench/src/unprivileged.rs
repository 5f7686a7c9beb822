//! An unprivileged container next to a privileged one (issue: "unprivileged containers"): a whole
//! `kapsule create` as the user, and a warm `kapsule enter c -- true` in each. The creates
//! alternate which kind goes first; each container is removed after it is timed, except the
//! last of each kind, which the warm enters run in.

use std::process::Command;

use anyhow::{Result, ensure};
use kapsule_integration_tests::{InstanceGuard, TestUser};

use crate::{Options, Row, measure, time_once};

/// The section: `lifecycle_trials` creates of each kind, `trials` warm enters in each, with the
/// release binaries in `bin` and a daemon serving `bus`.
pub(crate) fn section(
    bin: &std::path::Path,
    bus: &str,
    user: &TestUser,
    image: &str,
    options: &Options,
) -> Result<(&'static str, Vec<Row>)> {
    let rows = unprivileged(
        &bin.join("kapsule"),
        bus,
        user,
        image,
        options.trials,
        options.lifecycle_trials,
    )?;
    Ok(("unprivileged (ms; whole commands as the user)", rows))
}

fn unprivileged(
    kapsule: &std::path::Path,
    bus: &str,
    user: &TestUser,
    image: &str,
    trials: usize,
    create_trials: usize,
) -> Result<Vec<Row>> {
    let prefix = format!("kb-un{}", std::process::id());
    let as_user = |args: &[&str]| -> Command { crate::as_user(user, kapsule, bus, args) };
    let image = format!("local:{image}");
    let (mut privileged, mut unprivileged) = (Vec::new(), Vec::new());
    // The last container of each kind (privileged, unprivileged); the one before goes.
    let mut kept: [Option<InstanceGuard>; 2] = [None, None];
    for trial in 0..create_trials.max(1) {
        let kinds: [bool; 2] = if trial % 2 == 0 { [false, true] } else { [true, false] };
        for unprivileged_kind in kinds {
            let name = format!("{prefix}-{}{trial}", if unprivileged_kind { "u" } else { "p" });
            let guard = InstanceGuard(name.clone());
            let mut create = as_user(&["create", &name, "--image", &image]);
            if unprivileged_kind {
                create.arg("--unprivileged");
            }
            let took = time_once(&mut create)?;
            // The first enter sets the user up; the warm ones are timed below.
            let out = as_user(&["enter", &name, "--", "true"]).output()?;
            ensure!(
                out.status.success(),
                "enter {name}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
            if unprivileged_kind {
                unprivileged.push(took);
            } else {
                privileged.push(took);
            }
            kept[usize::from(unprivileged_kind)] = Some(guard);
        }
    }
    let warm = |kept: &Option<InstanceGuard>| -> Result<Vec<std::time::Duration>> {
        let name = kept
            .as_ref()
            .map(|g| g.0.clone())
            .expect("one container of each kind is kept");
        measure(trials, || as_user(&["enter", &name, "--", "true"]))
    };
    let (warm_privileged, warm_unprivileged) = (warm(&kept[0])?, warm(&kept[1])?);
    Ok(vec![
        Row::new(
            "kapsule create --unprivileged (user)",
            &unprivileged,
            Some(("kapsule create, privileged", &privileged)),
        ),
        Row::new("kapsule create, privileged (user)", &privileged, None),
        Row::new(
            "warm kapsule enter, unprivileged",
            &warm_unprivileged,
            Some(("warm enter, privileged", &warm_privileged)),
        ),
        Row::new("warm kapsule enter, privileged", &warm_privileged, None),
    ])
}
