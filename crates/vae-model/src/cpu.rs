//! What the CPU offers for bf16 arithmetic, detected at run time with `cpuid`.

use std::sync::OnceLock;

/// The CPU's model name and the instruction-set features that decide the arithmetic and the
/// layouts: `vae-train`'s `--precision auto`, and a bf16 model's tensor layout on the CPU (see
/// [`ConvVae`](crate::ConvVae)'s layout note).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct CpuFeatures {
    /// The model name the CPU reports (its `cpuid` brand string), or "unknown".
    pub model: String,
    /// AVX-512 Foundation.
    pub avx512f: bool,
    /// AVX-512-BF16: bf16 dot products in vector registers (Cooper Lake and later Xeons,
    /// AMD Zen 4 and later).
    pub avx512_bf16: bool,
    /// AMX-BF16 with AMX-TILE, and the operating system saving the tile registers: bf16
    /// matrix units (Intel Xeon from Sapphire Rapids on).
    pub amx_bf16: bool,
}

impl CpuFeatures {
    /// The features of the CPU this process runs on (all false off x86-64).
    pub fn detect() -> Self {
        detect()
    }

    /// [`CpuFeatures::detect`], once per process.
    pub fn current() -> &'static Self {
        static CURRENT: OnceLock<CpuFeatures> = OnceLock::new();
        CURRENT.get_or_init(Self::detect)
    }

    /// Whether a model computing in bf16 on this CPU runs its convs channels-last (NHWC)
    /// throughout: with AMX-BF16, whose oneDNN kernels compute in NHWC (measured 1.08–1.18×
    /// faster steps there, `docs/performance.md`), and not with AVX-512-BF16 alone (measured no
    /// faster).
    pub fn bf16_channels_last(&self) -> bool {
        self.amx_bf16
    }

    /// The bf16-relevant feature names present, as `lscpu` spells them.
    pub fn flags(&self) -> Vec<&'static str> {
        [
            (self.avx512f, "avx512f"),
            (self.avx512_bf16, "avx512_bf16"),
            (self.amx_bf16, "amx_bf16"),
        ]
        .into_iter()
        .filter_map(|(has, name)| has.then_some(name))
        .collect()
    }

    /// Features as given, for tests and for describing another machine.
    pub fn with(model: &str, avx512f: bool, avx512_bf16: bool, amx_bf16: bool) -> Self {
        Self {
            model: model.to_string(),
            avx512f,
            avx512_bf16,
            amx_bf16,
        }
    }
}

#[cfg(target_arch = "x86_64")]
#[allow(unsafe_code)] // `cpuid` only
fn detect() -> CpuFeatures {
    use std::arch::x86_64::{__cpuid, __cpuid_count};

    #[allow(unused_unsafe)] // `cpuid` is safe to call on every x86-64 CPU.
    let (leaf1, leaf7, leaf7_1, max_ext) = unsafe {
        let max_leaf = __cpuid(0).eax;
        let leaf7 = (max_leaf >= 7).then(|| __cpuid_count(7, 0));
        let leaf7_1 = (max_leaf >= 7).then(|| __cpuid_count(7, 1));
        (__cpuid(1), leaf7, leaf7_1, __cpuid(0x8000_0000).eax)
    };
    let bit = |reg: u32, n: u32| reg >> n & 1 == 1;
    // The OS must save a register state for its instructions to be usable: XCR0 says which.
    let osxsave = bit(leaf1.ecx, 27);
    let xcr0 = if osxsave { xcr0() } else { 0 };
    let zmm_state = xcr0 & 0xe6 == 0xe6; // SSE, AVX, opmask, ZMM_Hi256, Hi16_ZMM
    let tile_state = xcr0 & (3 << 17) == 3 << 17; // XTILECFG, XTILEDATA
    let (ebx7, edx7) = leaf7.map_or((0, 0), |l| (l.ebx, l.edx));
    let eax7_1 = leaf7_1.map_or(0, |l| l.eax);
    let avx512f = zmm_state && bit(ebx7, 16);
    let model = if max_ext >= 0x8000_0004 {
        let mut bytes = Vec::with_capacity(48);
        for leaf in 0x8000_0002..=0x8000_0004u32 {
            #[allow(unused_unsafe)]
            let r = unsafe { __cpuid(leaf) };
            for reg in [r.eax, r.ebx, r.ecx, r.edx] {
                bytes.extend_from_slice(&reg.to_le_bytes());
            }
        }
        String::from_utf8_lossy(&bytes)
            .trim_matches(|c: char| c == '\0' || c.is_whitespace())
            .to_string()
    } else {
        String::new()
    };
    CpuFeatures {
        model: if model.is_empty() {
            "unknown".into()
        } else {
            model
        },
        avx512f,
        avx512_bf16: avx512f && bit(eax7_1, 5),
        amx_bf16: tile_state && bit(edx7, 22) && bit(edx7, 24),
    }
}

/// XCR0, the register states the OS saves (only called when `cpuid` reports OSXSAVE).
#[cfg(target_arch = "x86_64")]
#[allow(unsafe_code)] // `xgetbv` only
fn xcr0() -> u64 {
    #[target_feature(enable = "xsave")]
    unsafe fn read() -> u64 {
        // SAFETY: `xgetbv` with ECX = 0 is valid whenever the OS enabled XSAVE (OSXSAVE).
        unsafe { std::arch::x86_64::_xgetbv(0) }
    }
    // SAFETY: the caller checked OSXSAVE, which implies XSAVE.
    unsafe { read() }
}

#[cfg(not(target_arch = "x86_64"))]
fn detect() -> CpuFeatures {
    CpuFeatures {
        model: "unknown".into(),
        ..CpuFeatures::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The detection agrees with the kernel's view of the same CPU.
    #[test]
    #[cfg(all(target_arch = "x86_64", target_os = "linux"))]
    fn detection_agrees_with_proc_cpuinfo() {
        let cpu = CpuFeatures::detect();
        let info = std::fs::read_to_string("/proc/cpuinfo").unwrap();
        let flags: Vec<&str> = info
            .lines()
            .find_map(|l| l.strip_prefix("flags"))
            .and_then(|l| l.split_once(':'))
            .map(|(_, f)| f.split_whitespace().collect())
            .unwrap_or_default();
        let has = |f: &str| flags.contains(&f);
        assert_eq!(cpu.avx512f, has("avx512f"), "{cpu:?}");
        assert_eq!(cpu.avx512_bf16, has("avx512_bf16"), "{cpu:?}");
        assert_eq!(cpu.amx_bf16, has("amx_bf16") && has("amx_tile"), "{cpu:?}");
        assert!(!cpu.model.is_empty());
    }

    #[test]
    fn flags_name_what_is_present() {
        let cpu = CpuFeatures::with("x", true, true, false);
        assert_eq!(cpu.flags(), ["avx512f", "avx512_bf16"]);
        assert!(
            CpuFeatures::with("x", false, false, false)
                .flags()
                .is_empty()
        );
    }
}
