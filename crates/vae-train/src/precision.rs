//! What `--precision auto` computes in, on which hardware, and why.
//!
//! The rule follows measurements of `vae train` (the tables in `docs/performance.md`, section
//! "Reduced precision"): bf16 where the CPU multiplies bf16 matrices natively and bf16 steps
//! were measured faster than f32 ones with the quality unchanged; f32 elsewhere.

use crate::config::Precision;
use crate::device::device_name;
use vae_model::CpuFeatures;

/// What [`Precision::resolve`] picked for a device, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct PrecisionChoice {
    /// [`Precision::Fp32`] or [`Precision::Bf16`], never `Auto`.
    pub precision: Precision,
    /// Why, naming the hardware: a clause to follow "bf16 because" (or "fp32 because").
    pub reason: String,
}

impl Precision {
    /// The concrete precision to train in on `device`: `Fp32` and `Bf16` are themselves;
    /// `Auto` looks at the CPU this process runs on (see [`Precision::resolve_on`]).
    pub fn resolve(self, device: tch::Device) -> PrecisionChoice {
        self.resolve_on(device, &CpuFeatures::detect())
    }

    /// [`Precision::resolve`] for a CPU described by `cpu`. `Auto` picks:
    /// - on CUDA, f32: bf16 steps were measured no faster (a step there is bound by kernel
    ///   launches, not arithmetic);
    /// - on a CPU with AMX-BF16 (Intel Xeon from Sapphire Rapids on), bf16: its matrix units
    ///   multiply bf16 only;
    /// - on a CPU with AVX-512-BF16 but no AMX (AMD Zen 4 and 5, Cooper Lake), bf16: measured
    ///   faster than f32 there, with the same test ELBO;
    /// - on any other CPU, f32: bf16 would be converted to f32 for every product.
    pub fn resolve_on(self, device: tch::Device, cpu: &CpuFeatures) -> PrecisionChoice {
        let choice = |precision, reason: String| PrecisionChoice { precision, reason };
        match self {
            Self::Fp32 | Self::Bf16 => choice(self, "it was asked for".to_string()),
            Self::Auto if device != tch::Device::Cpu => choice(
                Self::Fp32,
                format!(
                    "bf16 steps were measured no faster than fp32 on {}",
                    device_name(device)
                ),
            ),
            Self::Auto if cpu.amx_bf16 => choice(
                Self::Bf16,
                format!("the CPU ({}) has AMX-BF16 matrix units", cpu.model),
            ),
            Self::Auto if cpu.avx512_bf16 => choice(
                Self::Bf16,
                format!(
                    "the CPU ({}) has AVX-512-BF16, with which bf16 steps were measured faster than fp32 at the same test ELBO",
                    cpu.model
                ),
            ),
            Self::Auto => choice(
                Self::Fp32,
                format!(
                    "the CPU ({}) has neither AMX-BF16 nor AVX-512-BF16, so bf16 would be emulated",
                    cpu.model
                ),
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn auto_follows_the_hardware() {
        let amx = CpuFeatures::with("Intel Xeon", true, true, true);
        let zen = CpuFeatures::with("AMD EPYC", true, true, false);
        let plain = CpuFeatures::with("old", true, false, false);
        let cpu = tch::Device::Cpu;
        let pick = |d, c: &CpuFeatures| Precision::Auto.resolve_on(d, c).precision;
        assert_eq!(pick(cpu, &amx), Precision::Bf16);
        assert_eq!(pick(cpu, &zen), Precision::Bf16);
        assert_eq!(pick(cpu, &plain), Precision::Fp32);
        assert_eq!(pick(tch::Device::Cuda(0), &amx), Precision::Fp32);
        let why = Precision::Auto.resolve_on(cpu, &plain).reason;
        assert!(why.contains("(old)") && why.contains("emulated"), "{why}");
    }

    #[test]
    fn an_explicit_precision_is_kept() {
        let amx = CpuFeatures::with("Intel Xeon", true, true, true);
        for p in [Precision::Fp32, Precision::Bf16] {
            for d in [tch::Device::Cpu, tch::Device::Cuda(0)] {
                assert_eq!(p.resolve_on(d, &amx).precision, p);
            }
        }
    }

    #[test]
    fn resolve_never_answers_auto() {
        let p = Precision::Auto.resolve(tch::Device::Cpu).precision;
        assert_ne!(p, Precision::Auto);
    }
}
