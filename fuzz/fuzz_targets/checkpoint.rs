//! Checkpoint parsing on arbitrary bytes: a checkpoint or an error, never a panic.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(ckpt) = vae_train::Checkpoint::from_bytes(data, "fuzz.safetensors") {
        // Restoring into the default model must also fail cleanly on any mismatch.
        let mut vs = tch::nn::VarStore::new(tch::Device::Cpu);
        if vae_model::ConvVae::new(&vs.root(), &vae_model::ConvVaeConfig::default()).is_ok() {
            let _ = ckpt.restore_variables(&mut vs);
        }
    }
});
