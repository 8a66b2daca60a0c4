//! The IDX reader on arbitrary bytes, raw and gzip-wrapped: it must return an array or an
//! error, never panic or abort.
#![no_main]

use std::io::Write;

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else { return };
    if mode & 1 == 1 {
        // Valid gzip around fuzzed IDX bytes, so the reader's own logic is reached through gzip.
        let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        enc.write_all(rest).unwrap();
        let gz = enc.finish().unwrap();
        let _ = vae_data::read_idx_from(&gz[..]);
    } else {
        let _ = vae_data::read_idx_from(rest);
    }
});
