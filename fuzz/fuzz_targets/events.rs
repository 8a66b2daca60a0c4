//! TensorBoard event files: `vae_train::parse_events` on arbitrary bytes. It reads what a run
//! directory holds (a resumed run rewrites its event files from them), so no input may panic,
//! overflow or allocate beyond the input.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let events = vae_train::parse_events(data);
    // Every value read comes from bytes of the input.
    assert!(events.len() <= data.len());
});
