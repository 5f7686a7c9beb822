//! The image string parser: what it accepts is safe to put into an Incus URL segment, and what it
//! refuses gets a short message.
#![no_main]

use kapsule_dbus::image::{self, ImageRef};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|text: &str| {
    match ImageRef::parse(text) {
        Ok(parsed) => {
            assert!(text.len() <= image::MAX_LEN);
            assert!(!parsed.alias.is_empty());
            assert!(
                !parsed
                    .alias
                    .chars()
                    .any(|c| c.is_whitespace() || c.is_control() || "?#%:".contains(c))
            );
            assert!(!parsed.alias.split('/').any(|p| p.is_empty() || p == "." || p == ".."));
            if let Some(remote) = parsed.remote {
                assert!(!remote.is_empty() && remote.len() <= 63);
                assert!(!remote.contains(['/', ':', '.']));
            }
            if parsed.may_be_local() {
                assert!(!parsed.alias.contains('/'));
            }
        }
        Err(e) => {
            let message = e.for_image(text).to_string();
            // 64 quoted characters, each at most a 10-byte escape, and the reason.
            assert!(message.len() < 1024, "{} bytes", message.len());
        }
    }
    if image::check_local_alias(text).is_ok() {
        assert!(!text.contains('/') && !text.is_empty() && text != "." && text != "..");
    }
});
