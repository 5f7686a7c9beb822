//! What a container's creator asked to have done in it once, when it is made (and again when it is
//! reset, which makes it as if new): the `pre_init_hooks`, then the `additional_packages`
//! installed by its own package manager, then the `init_hooks`, in distrobox's order.
//!
//! Each step runs as root through the session helper, with its output passed on line by line;
//! the first step that fails ends the whole with its exit code and last line. The steps are kept
//! in the container's config (JSON lists under `user.kapsule.`), so a reset can run them again
//! and `kapsule info` can show them.

use std::time::Duration;

use kapsule_dbus::options::CreateOptions;
use kapsule_incus::models::{ConfigMap, Instance};

use crate::container::Containers;
use crate::container::exec::run_as_root_reporting;
use crate::operation::{Failure, MessageKind, Notes};

/// How long one step may run (a large install on a slow mirror takes a while).
const STEP_LIMIT: Duration = Duration::from_secs(60 * 60);

const PRE_INIT_HOOKS: &str = "user.kapsule.pre-init-hooks";
const PACKAGES: &str = "user.kapsule.additional-packages";
const INIT_HOOKS: &str = "user.kapsule.init-hooks";

/// The install, as one POSIX `sh` script taking the package names as its arguments (never parsed
/// by a shell), with the first package manager found, non-interactive.
const INSTALL: &str = r#"set -e
if command -v apt-get >/dev/null 2>&1; then
    echo "Installing with apt: $*"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update
    apt-get -y -o Dpkg::Options::=--force-confdef -o Dpkg::Options::=--force-confold install "$@"
elif command -v dnf >/dev/null 2>&1; then
    echo "Installing with dnf: $*"
    dnf -y install "$@"
elif command -v pacman >/dev/null 2>&1; then
    echo "Installing with pacman: $*"
    pacman -Sy --noconfirm --needed "$@"
elif command -v zypper >/dev/null 2>&1; then
    echo "Installing with zypper: $*"
    zypper --non-interactive install "$@"
elif command -v apk >/dev/null 2>&1; then
    echo "Installing with apk: $*"
    apk add --update-cache "$@"
elif command -v xbps-install >/dev/null 2>&1; then
    echo "Installing with xbps: $*"
    xbps-install -Sy "$@"
else
    echo "No package manager found (apt, dnf, pacman, zypper, apk or xbps)" >&2
    exit 127
fi
"#;

/// The steps of one container.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct Steps {
    pub pre_init_hooks: Vec<String>,
    pub packages: Vec<String>,
    pub init_hooks: Vec<String>,
}

impl Steps {
    pub(crate) fn of_options(options: &CreateOptions) -> Steps {
        Steps {
            pre_init_hooks: options.pre_init_hooks.clone(),
            packages: options.additional_packages.clone(),
            init_hooks: options.init_hooks.clone(),
        }
    }

    /// The steps recorded in a container's config (none for one made without any, or by the
    /// original daemon).
    pub(crate) fn of_instance(instance: &Instance) -> Steps {
        let list = |key: &str| -> Vec<String> {
            instance
                .config
                .get(key)
                .and_then(|json| serde_json::from_str(json).ok())
                .unwrap_or_default()
        };
        Steps {
            pre_init_hooks: list(PRE_INIT_HOOKS),
            packages: list(PACKAGES),
            init_hooks: list(INIT_HOOKS),
        }
    }

    /// The config keys that record these steps (only the lists that have something).
    pub(crate) fn config(&self) -> ConfigMap {
        [
            (PRE_INIT_HOOKS, &self.pre_init_hooks),
            (PACKAGES, &self.packages),
            (INIT_HOOKS, &self.init_hooks),
        ]
        .into_iter()
        .filter(|(_, list)| !list.is_empty())
        .map(|(key, list)| (key.to_owned(), serde_json::to_string(list).unwrap_or_default()))
        .collect()
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.pre_init_hooks.is_empty() && self.packages.is_empty() && self.init_hooks.is_empty()
    }

    /// Each step in order: what it is called, and the command that does it.
    fn commands(&self) -> Vec<(String, Vec<&str>)> {
        fn hooks<'a>(kind: &str, hooks: &'a [String]) -> Vec<(String, Vec<&'a str>)> {
            hooks
                .iter()
                .enumerate()
                .map(|(i, hook)| {
                    let first = hook.lines().find(|l| !l.trim().is_empty()).unwrap_or_default().trim();
                    let label = format!("{kind} {} of {}: {first}", i + 1, hooks.len());
                    (label, vec!["sh", "-c", hook.as_str()])
                })
                .collect()
        }
        let mut steps = hooks("Pre-init hook", &self.pre_init_hooks);
        if !self.packages.is_empty() {
            let mut install = vec!["sh", "-c", INSTALL, "sh"];
            install.extend(self.packages.iter().map(String::as_str));
            steps.push((format!("Installing {}", self.packages.join(" ")), install));
        }
        steps.extend(hooks("Init hook", &self.init_hooks));
        steps
    }
}

/// Runs the steps in running container `name`, stopping at the first that fails. A cancel ends
/// the wait at once: the command may go on in the container, which the caller then removes or
/// leaves to be reset again.
pub(crate) async fn run(containers: &Containers, notes: Notes<'_>, name: &str, steps: &Steps) -> Result<(), Failure> {
    for (label, command) in steps.commands() {
        notes.info(&label).await;
        let ran = tokio::select! {
            ran = run_as_root_reporting(containers, name, &command, STEP_LIMIT, notes) => ran?,
            () = notes.cancelled() => return Err(Failure::Cancelled),
        };
        if !ran.success() {
            return Err(Failure::Failed(format!("{label} failed{}", ran.failure())));
        }
    }
    if !steps.is_empty() {
        notes.say(MessageKind::Dim, "Setup steps done").await;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn steps_go_in_distrobox_order_and_packages_are_arguments() {
        let steps = Steps {
            pre_init_hooks: vec!["echo one".into(), "\n  echo two\necho three".into()],
            packages: vec!["git".into(), "g++".into()],
            init_hooks: vec!["touch /done".into()],
        };
        let commands = steps.commands();
        let labels: Vec<&str> = commands.iter().map(|(l, _)| l.as_str()).collect();
        assert_eq!(
            labels,
            [
                "Pre-init hook 1 of 2: echo one",
                "Pre-init hook 2 of 2: echo two",
                "Installing git g++",
                "Init hook 1 of 1: touch /done"
            ]
        );
        assert_eq!(commands[1].1, ["sh", "-c", "\n  echo two\necho three"]);
        assert_eq!(commands[2].1[3..], ["sh", "git", "g++"]);
    }

    #[test]
    fn steps_are_recorded_and_read_back() {
        let steps = Steps {
            pre_init_hooks: vec![],
            packages: vec!["vim".into()],
            init_hooks: vec!["echo 'a \"b\"'".into()],
        };
        let config = steps.config();
        assert_eq!(config.len(), 2, "empty lists are not recorded: {config:?}");
        let instance = Instance {
            config,
            ..Default::default()
        };
        assert_eq!(Steps::of_instance(&instance), steps);
        assert!(Steps::of_instance(&Instance::default()).is_empty());
    }

    #[test]
    fn the_install_script_is_posix_sh() {
        let checked = std::process::Command::new("sh")
            .args(["-n", "-c", INSTALL])
            .status()
            .unwrap();
        assert!(checked.success(), "sh -n");
    }
}
