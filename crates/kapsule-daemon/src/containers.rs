//! What the daemon knows about containers: which instances are Kapsule's, the `(sssss)` struct
//! clients list, names Incus accepts, and the start/stop/delete work.

use std::time::Duration;

use kapsule_dbus::{ContainerInfo, Error};
use kapsule_incus::models::Instance;

use crate::State;
use crate::authority::Action;
use crate::operation::{Failure, MessageKind, Reporter};

/// Every Kapsule container carries config keys under this prefix (the original daemon's too).
pub(crate) const META_PREFIX: &str = "user.kapsule.";

/// How long an operation waits for Incus before giving up.
pub(crate) const INCUS_WAIT: Option<Duration> = Some(Duration::from_secs(600));

/// The uid of the user who created a container (their containers are theirs to enter).
pub(crate) const OWNER_KEY: &str = "user.kapsule.owner";

/// True when `uid` may use `instance` as their own: they created it, or, in a container made by
/// the original daemon (which recorded no owner), they were set up in it.
pub(crate) fn is_owner(instance: &Instance, uid: u32) -> bool {
    match instance.config.get(OWNER_KEY) {
        Some(owner) => *owner == uid.to_string(),
        None => crate::users::is_set_up(instance, uid),
    }
}

/// What `uid` needs to be allowed to enter `instance`: one's own container, entering; anyone
/// else's, managing containers.
pub(crate) fn enter_action(instance: &Instance, uid: u32) -> Action {
    if is_owner(instance, uid) {
        Action::EnterContainer
    } else {
        Action::ManageContainer
    }
}

/// True for instances Kapsule made (or the original daemon made): the daemon never touches others.
pub(crate) fn is_kapsule(instance: &Instance) -> bool {
    instance.config.keys().any(|k| k.starts_with(META_PREFIX))
}

/// `(name, status, image, created, mode)` as the original daemon returned it.
pub(crate) fn container_info(instance: &Instance) -> ContainerInfo {
    let config = &instance.config;
    let image = config
        .get("image.description")
        .or_else(|| config.get("image.os"))
        .filter(|s| !s.is_empty())
        .cloned()
        .unwrap_or_else(|| "unknown".to_owned());
    let flag = |key: &str| config.get(key).map(String::as_str) == Some("true");
    let mode = if flag("user.kapsule.dbus-mux") {
        "DbusMux"
    } else if flag("user.kapsule.session-mode") {
        "Session"
    } else {
        "Default"
    };
    let status = if instance.status.is_empty() {
        "Unknown".to_owned()
    } else {
        instance.status.clone()
    };
    ContainerInfo {
        name: instance.name.clone(),
        status,
        image,
        created: iso8601_with_offset(&instance.created_at),
        mode: mode.to_owned(),
    }
}

/// Incus says `2026-11-22T00:22:55.197237729Z`; clients were given Python's
/// `2026-11-22T00:22:55.197237+00:00`. Keep microseconds and spell the offset out.
fn iso8601_with_offset(incus: &str) -> String {
    let Some(base) = incus.strip_suffix('Z') else {
        return incus.to_owned();
    };
    match base.split_once('.') {
        Some((seconds, fraction)) => {
            let micros: String = fraction.chars().chain(std::iter::repeat('0')).take(6).collect();
            format!("{seconds}.{micros}+00:00")
        }
        None => format!("{base}+00:00"),
    }
}

/// Incus's rules for instance names: 1 to 63 characters of ASCII letters, digits and `-`, not
/// starting with a digit or `-`, not ending with `-`.
pub(crate) fn validate_name(name: &str) -> Result<(), Error> {
    let bad = |why: &str| {
        Err(Error::InvalidArgument(format!(
            "Invalid container name {}: {why}",
            kapsule_dbus::quote(name)
        )))
    };
    if name.is_empty() || name.len() > 63 {
        return bad("it must be 1 to 63 characters long");
    }
    if !name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-') {
        return bad("only letters, digits and '-' are allowed");
    }
    if name.starts_with(|c: char| c.is_ascii_digit() || c == '-') {
        return bad("it must not start with a digit or '-'");
    }
    if name.ends_with('-') {
        return bad("it must not end with '-'");
    }
    Ok(())
}

/// The Kapsule container `name`, or the named error a client should get.
pub(crate) async fn get_kapsule_container(state: &State, name: &str) -> Result<Instance, Error> {
    validate_name(name)?;
    let instance = match state.incus.get_instance(name).await {
        Ok(instance) => instance,
        Err(e) if e.is_not_found() => return Err(Error::NotFound(format!("Container '{name}' does not exist"))),
        Err(e) => return Err(crate::incus_error(e)),
    };
    if !is_kapsule(&instance) {
        return Err(Error::NotFound(format!(
            "'{name}' is an Incus instance, but not a Kapsule container"
        )));
    }
    Ok(instance)
}

pub(crate) fn is_running(instance: &Instance) -> bool {
    instance.status == "Running"
}

/// Runs one Incus operation to its end, cancelling it (where Incus allows) when the client
/// cancels ours.
pub(crate) async fn run_incus_operation(
    state: &State,
    reporter: &Reporter,
    op: kapsule_incus::models::Operation,
) -> Result<kapsule_incus::models::Operation, Failure> {
    tokio::select! {
        done = state.incus.wait_operation(&op.id, INCUS_WAIT) => done.map_err(Failure::from),
        () = reporter.cancelled() => {
            if let Err(e) = state.incus.cancel_operation(&op.id).await {
                log::info!("Incus operation {} cannot be cancelled ({e}); waiting for it to end", op.id);
            }
            let _ = state.incus.wait_operation(&op.id, INCUS_WAIT).await;
            Err(Failure::Cancelled)
        }
    }
}

pub(crate) async fn start(state: &State, reporter: &Reporter, name: &str) -> Result<String, Failure> {
    let instance = get_kapsule_container(state, name).await?;
    if is_running(&instance) {
        reporter.warn(&format!("Container '{name}' is already running")).await;
        return Ok(String::new());
    }
    if instance.config.get("raw.lxc").is_some_and(|raw| {
        raw.lines()
            .any(|l| l.starts_with("lxc.hook.mount=") && l.contains("nvidia"))
    }) {
        reporter
            .say(MessageKind::Dim, "NVIDIA userspace drivers are injected on start")
            .await;
    }
    let op = state.incus.start_instance(name).await?;
    run_incus_operation(state, reporter, op).await?;
    // The host's timezone or DNS may have changed while it was stopped.
    crate::hostsync::report(reporter, crate::hostsync::sync_instance(state, &instance).await).await;
    state.containers_changed().await;
    Ok(format!("Container '{name}' started"))
}

/// Starts the container if it is not running (a no-op otherwise), without telling clients
/// `ContainersChanged` (the original daemon did not for starts on the way in either).
pub(crate) async fn ensure_running(
    state: &State,
    reporter: Option<&Reporter>,
    instance: &Instance,
) -> Result<(), Failure> {
    if is_running(instance) {
        return Ok(());
    }
    let name = instance.name.as_str();
    match reporter {
        Some(r) => r.info(&format!("Starting container '{name}'")).await,
        None => log::info!("starting container '{name}'"),
    }
    let op = state.incus.start_instance(name).await?;
    match reporter {
        Some(r) => {
            run_incus_operation(state, r, op).await?;
        }
        None => {
            state.incus.wait_operation(&op.id, INCUS_WAIT).await?;
        }
    }
    crate::hostsync::log_lines(name, crate::hostsync::sync_instance(state, instance).await);
    Ok(())
}

pub(crate) async fn stop(state: &State, reporter: &Reporter, name: &str, force: bool) -> Result<String, Failure> {
    let instance = get_kapsule_container(state, name).await?;
    if !is_running(&instance) {
        reporter.warn(&format!("Container '{name}' is not running")).await;
        return Ok(String::new());
    }
    let op = state.incus.stop_instance(name, force, Duration::from_secs(60)).await?;
    run_incus_operation(state, reporter, op).await?;
    state.containers_changed().await;
    Ok(format!("Container '{name}' stopped"))
}

pub(crate) async fn delete(state: &State, reporter: &Reporter, name: &str, force: bool) -> Result<String, Failure> {
    let instance = get_kapsule_container(state, name).await?;
    if is_running(&instance) {
        if !force {
            return Err(Failure::Failed(format!(
                "Container '{name}' is running; stop it first or use force"
            )));
        }
        reporter.info("Stopping the container first").await;
        let op = state.incus.stop_instance(name, true, Duration::from_secs(30)).await?;
        run_incus_operation(state, reporter, op).await?;
    }
    let op = state.incus.delete_instance(name).await?;
    run_incus_operation(state, reporter, op).await?;
    state.containers_changed().await;
    Ok(format!("Container '{name}' removed"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_follow_incus_rules() {
        for good in ["a", "dev", "my-box-2", &"x".repeat(63)] {
            assert!(validate_name(good).is_ok(), "{good}");
        }
        for bad in [
            "",
            "1abc",
            "-abc",
            "abc-",
            "a_b",
            "a.b",
            "a/b",
            "../x",
            "ä",
            &"x".repeat(64),
        ] {
            assert!(matches!(validate_name(bad), Err(Error::InvalidArgument(_))), "{bad}");
        }
    }

    #[test]
    fn info_matches_the_original_shape() {
        let mut i = Instance {
            name: "dev".into(),
            status: "Running".into(),
            ..Default::default()
        };
        i.created_at = "2026-11-22T00:22:55.197237729Z".into();
        i.config.insert("image.os".into(), "debian".into());
        i.config.insert("user.kapsule.session-mode".into(), "true".into());
        assert_eq!(
            container_info(&i),
            ContainerInfo {
                name: "dev".into(),
                status: "Running".into(),
                image: "debian".into(),
                created: "2026-11-22T00:22:55.197237+00:00".into(),
                mode: "Session".into()
            }
        );
        i.config.insert("image.description".into(), "Debian 12".into());
        i.config.insert("user.kapsule.dbus-mux".into(), "true".into());
        i.created_at = "2026-11-22T00:22:55Z".into();
        i.status.clear();
        let t = container_info(&i);
        assert_eq!(
            (t.status.as_str(), t.image.as_str(), t.created.as_str(), t.mode.as_str()),
            ("Unknown", "Debian 12", "2026-11-22T00:22:55+00:00", "DbusMux")
        );
        assert!(is_kapsule(&i));
        assert!(!is_kapsule(&Instance::default()));
    }
}
