//! TensorBoard event files: `vae_train::parse_events` on arbitrary bytes. It reads what a run
//! directory holds (a resumed run rewrites its event files from them), so no input may panic,
//! overflow or allocate beyond the input. `events_fuzz_input` frames part of the inputs as
//! records with valid CRCs, so the decoding behind the checksums is reached too.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let bytes = vae_train::events_fuzz_input(data);
    let events = vae_train::parse_events(&bytes);
    // Every value read comes from bytes of the input.
    assert!(events.len() <= bytes.len());
});
