//! What comes back from Incus: an answer's envelope as the client decodes it (any status, any
//! body), and the models the daemon reads from it, with the methods it calls on them.
#![no_main]

use kapsule_incus::models::{Event, Image, Instance, InstanceState, Operation, Server};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&status, body)) = data.split_first() else {
        return;
    };
    // 200, an error status, or one Incus never sends.
    let status = [200u16, 202, 400, 403, 404, 500, 301, 100][usize::from(status % 8)];
    if let Ok((_kind, metadata)) = kapsule_incus::decode_answer_for_fuzzing(status, body) {
        let _ = serde_json::from_value::<Vec<Instance>>(metadata.clone());
        let _ = serde_json::from_value::<Operation>(metadata);
    }
    if let Ok(instance) = serde_json::from_slice::<Instance>(body) {
        let _ = instance.config.get("user.kapsule.owner");
    }
    if let Ok(state) = serde_json::from_slice::<InstanceState>(body)
        && let Some(pid) = state.init_pid()
    {
        assert!(pid > 0);
    }
    if let Ok(operation) = serde_json::from_slice::<Operation>(body) {
        let _ = (operation.is_final(), operation.metadata_str("fingerprint"));
    }
    if let Ok(image) = serde_json::from_slice::<Image>(body) {
        let _ = image.description();
    }
    if let Ok(event) = serde_json::from_slice::<Event>(body) {
        let _ = event.operation();
    }
    if let Ok(server) = serde_json::from_slice::<Server>(body) {
        let _ = server.has_extension("instances");
    }
});
