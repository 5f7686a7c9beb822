//! kapsule-nvidia-hook: registered per container (`lxc.hook.mount` in `raw.lxc`) when it was
//! created with `--nvidia-drivers`. On every start it injects the host's NVIDIA userspace by
//! exec'ing `nvidia-container-cli configure ... <rootfs>` (no shell in between), or does
//! nothing when this is not a mount hook or the host has no NVIDIA GPU or tool.

use std::os::unix::process::CommandExt;
use std::path::Path;

use kapsule_nvidia_hook::{Action, Input, decide};

fn main() {
    match decide(&Input::from_process(), |p: &Path| p.exists()) {
        Action::Nothing => {}
        Action::Fail(message) => {
            eprintln!("kapsule-nvidia-hook: {message}");
            std::process::exit(1);
        }
        Action::Exec { program, args } => {
            let error = std::process::Command::new(&program).args(&args).exec();
            eprintln!("kapsule-nvidia-hook: cannot run {}: {error}", program.display());
            std::process::exit(1);
        }
    }
}
