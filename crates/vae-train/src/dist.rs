//! Data-parallel training's communication: a process group on libtorch's own c10d — the
//! `TCPStore` rendezvous and `ProcessGroupGloo` (CPU tensors) or `ProcessGroupNCCL` (CUDA
//! tensors), the code PyTorch DDP runs — bound in `dist.cpp`, which `build.rs` compiles
//! against the libtorch tch links (`cfg(dist)`).
//!
//! A [`Rendezvous`] is read from the variables `torchrun` sets (`RANK`, `WORLD_SIZE`,
//! `MASTER_ADDR`, `MASTER_PORT`, `TORCHELASTIC_USE_AGENT_STORE`, …), as PyTorch's
//! `init_process_group(init_method="env://")` reads them; [`ProcessGroup::join`] meets the other
//! ranks there.

use std::ffi::{CString, c_void};
use std::time::Duration;

use tch::{Device, Tensor};

use crate::error::{Result, TrainError};

/// How long a rank waits for the others in one collective, or in the rendezvous, before it
/// gives up with an error: longer than rank 0's checkpoint writing and pictures at an epoch's
/// end (the others wait for it at the next collective), shorter than the 90 s within which a
/// lost rank must end the job. Gloo's own default is 30 minutes.
pub const COLLECTIVE_TIMEOUT: Duration = Duration::from_secs(60);

/// Which c10d backends this build has.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Backends {
    /// Gloo, for CPU tensors.
    pub gloo: bool,
    /// NCCL, for CUDA tensors.
    pub nccl: bool,
    /// Why a backend is missing, when one is.
    pub missing: Vec<String>,
}

/// The backends compiled in.
pub fn backends() -> Backends {
    let mut missing = Vec::new();
    // SAFETY: reads compile-time flags; no arguments.
    #[cfg(dist)]
    #[allow(unsafe_code)]
    let mask = unsafe { ffi::vae_dist_backends() };
    #[cfg(not(dist))]
    let mask = 0;
    #[cfg(not(dist))]
    missing.push("gloo: vae-train was built without libtorch's headers".to_string());
    let nccl_missing = option_env!("VAE_DIST_NCCL_MISSING").unwrap_or("");
    if mask & 2 == 0 && !nccl_missing.is_empty() {
        missing.push(format!("nccl: {nccl_missing}"));
    }
    Backends {
        gloo: mask & 1 != 0,
        nccl: mask & 2 != 0,
        missing,
    }
}

/// Where and as whom a process meets the others: what `torchrun` (or `vae train --nproc`)
/// tells each worker through its environment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rendezvous {
    /// The store's host (`MASTER_ADDR`).
    pub addr: String,
    /// The store's port (`MASTER_PORT`).
    pub port: u16,
    /// This process's rank, 0-based (`RANK`).
    pub rank: usize,
    /// The number of processes (`WORLD_SIZE`).
    pub world: usize,
    /// This process's rank on its machine (`LOCAL_RANK`): its GPU, on a CUDA machine.
    pub local_rank: usize,
    /// Whether this process hosts the store: rank 0, unless a launcher's agent hosts it
    /// (`TORCHELASTIC_USE_AGENT_STORE=True`, as torchrun and `vae train --nproc` set).
    pub host_store: bool,
    /// Prefix of every key this job writes: the agent's store outlives worker restarts, so
    /// each attempt (`TORCHELASTIC_RESTART_COUNT`) has its own keys, as PyTorch's
    /// `PrefixStore` gives them.
    pub prefix: String,
}

impl Rendezvous {
    /// The rendezvous the environment describes, or `None` when `WORLD_SIZE` is unset (a plain
    /// one-process run). A variable that is set but malformed, or missing beside
    /// `WORLD_SIZE`, is an error naming it.
    pub fn from_env() -> Result<Option<Self>> {
        Self::from_vars(|k| std::env::var(k).ok())
    }

    /// [`from_env`](Self::from_env) over any source of variables.
    pub fn from_vars(var: impl Fn(&str) -> Option<String>) -> Result<Option<Self>> {
        let Some(world) = var("WORLD_SIZE") else {
            return Ok(None);
        };
        let bad = |name: &str, value: &str, want: &str| {
            TrainError::Distributed(format!(
                "the environment variable {name}={value:?} is not {want}; a launcher such as torchrun sets it"
            ))
        };
        let number = |name: &str, want: &str| -> Result<usize> {
            let v = var(name).ok_or_else(|| {
                TrainError::Distributed(format!(
                    "WORLD_SIZE is set but {name} is not: launch the workers with torchrun or vae train --nproc, which set both"
                ))
            })?;
            v.trim().parse().map_err(|_| bad(name, &v, want))
        };
        let world: usize = world
            .trim()
            .parse()
            .ok()
            .filter(|&w| w >= 1)
            .ok_or_else(|| bad("WORLD_SIZE", &world, "a positive whole number"))?;
        let rank = number("RANK", "a whole number")?;
        if rank >= world {
            return Err(TrainError::Distributed(format!(
                "RANK={rank} is not below WORLD_SIZE={world}"
            )));
        }
        let local_rank = match var("LOCAL_RANK") {
            Some(v) => v
                .trim()
                .parse()
                .map_err(|_| bad("LOCAL_RANK", &v, "a whole number"))?,
            None => 0,
        };
        let addr = var("MASTER_ADDR").unwrap_or_else(|| "127.0.0.1".into());
        let port = match var("MASTER_PORT") {
            Some(v) => v
                .trim()
                .parse::<u16>()
                .ok()
                .filter(|&p| p > 0)
                .ok_or_else(|| bad("MASTER_PORT", &v, "a port number"))?,
            None => 29500,
        };
        let agent_store = var("TORCHELASTIC_USE_AGENT_STORE")
            .is_some_and(|v| v.trim().eq_ignore_ascii_case("true"));
        let attempt = var("TORCHELASTIC_RESTART_COUNT").unwrap_or_else(|| "0".into());
        Ok(Some(Self {
            addr,
            port,
            rank,
            world,
            local_rank,
            host_store: rank == 0 && !agent_store,
            prefix: format!("vae/{}/", attempt.trim()),
        }))
    }
}

#[cfg(dist)]
#[allow(unsafe_code)]
mod ffi {
    use std::ffi::{c_char, c_int, c_void};
    use torch_sys::C_tensor;

    unsafe extern "C" {
        pub fn vae_dist_new(
            host: *const c_char,
            port: u16,
            is_server: c_int,
            rank: c_int,
            world: c_int,
            prefix: *const c_char,
            timeout_ms: i64,
            nccl: c_int,
            out: *mut *mut c_void,
        ) -> *mut c_char;
        pub fn vae_dist_free(group: *mut c_void);
        pub fn vae_dist_store_host(
            port: u16,
            timeout_ms: i64,
            out: *mut *mut c_void,
            bound: *mut u16,
        ) -> *mut c_char;
        pub fn vae_dist_store_free(store: *mut c_void);
        pub fn vae_dist_allreduce_sum(group: *mut c_void, tensor: *const C_tensor) -> *mut c_char;
        pub fn vae_dist_broadcast(
            group: *mut c_void,
            tensor: *const C_tensor,
            root: c_int,
        ) -> *mut c_char;
        pub fn vae_dist_store_set(
            group: *mut c_void,
            key: *const c_char,
            value: *const u8,
            len: usize,
        ) -> *mut c_char;
        pub fn vae_dist_store_get(
            group: *mut c_void,
            key: *const c_char,
            value: *mut *mut u8,
            len: *mut usize,
        ) -> *mut c_char;
        pub fn vae_dist_backends() -> c_int;
        pub fn vae_free_error(message: *mut c_char);
    }

    /// `Err` with the message of a non-null error from the C++ side (freeing it).
    pub fn check(err: *mut c_char) -> Result<(), String> {
        if err.is_null() {
            return Ok(());
        }
        // SAFETY: a non-null return is a NUL-terminated string from `strdup`, freed once here.
        let message = unsafe {
            let s = std::ffi::CStr::from_ptr(err).to_string_lossy().into_owned();
            vae_free_error(err);
            s
        };
        Err(message)
    }
}

fn c_string(s: &str) -> Result<CString> {
    CString::new(s).map_err(|_| TrainError::Distributed(format!("{s:?} contains a NUL byte")))
}

/// A group of processes that train one model together: this process's rank in it, and the
/// collectives the trainer needs (sum over ranks, broadcast from a rank, a key-value store).
///
/// Every collective waits at most [`COLLECTIVE_TIMEOUT`]; a rank that died makes the others'
/// next collective fail (Gloo sees the closed connection) rather than hang.
#[derive(Debug)]
pub struct ProcessGroup {
    raw: *mut c_void,
    rank: usize,
    world: usize,
    device: Device,
}

// SAFETY: c10d's process groups and stores are used from any thread by PyTorch; the trainer
// calls this one from one thread at a time (`&self` methods do not run concurrently with
// `Drop`).
#[allow(unsafe_code)]
unsafe impl Send for ProcessGroup {}

impl ProcessGroup {
    /// Meets the other ranks of `rendezvous` (hosting the store when it says so) and builds
    /// the backend for tensors on `device`: Gloo on the CPU, NCCL on CUDA. Blocks until every
    /// rank has joined, or fails after [`COLLECTIVE_TIMEOUT`].
    pub fn join(rendezvous: &Rendezvous, device: Device) -> Result<Self> {
        let r = rendezvous;
        let nccl = device.is_cuda();
        let b = backends();
        if (nccl && !b.nccl) || (!nccl && !b.gloo) {
            return Err(TrainError::Distributed(format!(
                "this build of vae cannot train on several processes on {}: {} (vae info lists the backends)",
                if nccl { "CUDA" } else { "the CPU" },
                b.missing.join("; ")
            )));
        }
        let fail = |e: String| {
            TrainError::Distributed(format!(
                "rank {} of {} could not join the others at {}:{}: {e}",
                r.rank, r.world, r.addr, r.port
            ))
        };
        let (host, prefix) = (c_string(&r.addr)?, c_string(&r.prefix)?);
        let raw = Self::new_raw(&host, r, &prefix, nccl).map_err(fail)?;
        Ok(Self {
            raw,
            rank: r.rank,
            world: r.world,
            device,
        })
    }

    #[cfg(dist)]
    #[allow(unsafe_code)]
    fn new_raw(
        host: &CString,
        r: &Rendezvous,
        prefix: &CString,
        nccl: bool,
    ) -> Result<*mut c_void, String> {
        let mut out = std::ptr::null_mut();
        // SAFETY: the strings live across the call; `out` receives an owned pointer on success.
        ffi::check(unsafe {
            ffi::vae_dist_new(
                host.as_ptr(),
                r.port,
                i32::from(r.host_store),
                r.rank as i32,
                r.world as i32,
                prefix.as_ptr(),
                COLLECTIVE_TIMEOUT.as_millis() as i64,
                i32::from(nccl),
                &mut out,
            )
        })?;
        Ok(out)
    }

    #[cfg(not(dist))]
    fn new_raw(_: &CString, _: &Rendezvous, _: &CString, _: bool) -> Result<*mut c_void, String> {
        Err("built without libtorch's c10d".into())
    }

    /// This process's rank, 0-based.
    pub fn rank(&self) -> usize {
        self.rank
    }

    /// The number of processes.
    pub fn world(&self) -> usize {
        self.world
    }

    /// The device the collectives' tensors live on.
    pub fn device(&self) -> Device {
        self.device
    }

    fn failed(&self, what: &str, e: String) -> TrainError {
        TrainError::Distributed(format!(
            "rank {} of {}: {what} failed, so another rank has stopped or is unreachable: {e}",
            self.rank, self.world
        ))
    }

    /// Replaces the contiguous `tensor` on every rank by its sum over the ranks.
    #[cfg(dist)]
    #[allow(unsafe_code)]
    pub fn all_reduce_sum(&self, tensor: &Tensor) -> Result<()> {
        debug_assert!(tensor.is_contiguous());
        // SAFETY: `raw` is live until drop; the tensor handle is borrowed for the call.
        ffi::check(unsafe { ffi::vae_dist_allreduce_sum(self.raw, tensor.as_ptr()) })
            .map_err(|e| self.failed("a sum over the ranks", e))
    }

    /// Overwrites the contiguous `tensor` on every rank with rank `root`'s.
    #[cfg(dist)]
    #[allow(unsafe_code)]
    pub fn broadcast(&self, tensor: &Tensor, root: usize) -> Result<()> {
        debug_assert!(tensor.is_contiguous());
        // SAFETY: as in `all_reduce_sum`.
        ffi::check(unsafe { ffi::vae_dist_broadcast(self.raw, tensor.as_ptr(), root as i32) })
            .map_err(|e| self.failed("a broadcast", e))
    }

    /// Stores `value` under `key` (within this job's prefix) for the other ranks.
    #[cfg(dist)]
    #[allow(unsafe_code)]
    pub fn set(&self, key: &str, value: &[u8]) -> Result<()> {
        let k = c_string(key)?;
        // SAFETY: `k` and `value` live across the call, which copies them.
        ffi::check(unsafe {
            ffi::vae_dist_store_set(self.raw, k.as_ptr(), value.as_ptr(), value.len())
        })
        .map_err(|e| self.failed("writing to the store", e))
    }

    /// The value another rank stored under `key`, waiting for it up to [`COLLECTIVE_TIMEOUT`].
    #[cfg(dist)]
    #[allow(unsafe_code)]
    pub fn get(&self, key: &str) -> Result<Vec<u8>> {
        let k = c_string(key)?;
        let (mut ptr, mut len) = (std::ptr::null_mut(), 0usize);
        // SAFETY: on success `ptr` holds `len` bytes malloc'ed by the C++ side, copied out and
        // freed here.
        unsafe {
            ffi::check(ffi::vae_dist_store_get(
                self.raw,
                k.as_ptr(),
                &mut ptr,
                &mut len,
            ))
            .map_err(|e| self.failed(&format!("reading {key:?} from the store"), e))?;
            let bytes = std::slice::from_raw_parts(ptr, len).to_vec();
            ffi::vae_free_error(ptr.cast());
            Ok(bytes)
        }
    }

    #[cfg(not(dist))]
    pub fn all_reduce_sum(&self, _: &Tensor) -> Result<()> {
        unreachable!("a ProcessGroup cannot be built without cfg(dist)")
    }
    #[cfg(not(dist))]
    pub fn broadcast(&self, _: &Tensor, _: usize) -> Result<()> {
        unreachable!("a ProcessGroup cannot be built without cfg(dist)")
    }
    #[cfg(not(dist))]
    pub fn set(&self, _: &str, _: &[u8]) -> Result<()> {
        unreachable!("a ProcessGroup cannot be built without cfg(dist)")
    }
    #[cfg(not(dist))]
    pub fn get(&self, _: &str) -> Result<Vec<u8>> {
        unreachable!("a ProcessGroup cannot be built without cfg(dist)")
    }
}

impl Drop for ProcessGroup {
    #[allow(unsafe_code)]
    fn drop(&mut self) {
        #[cfg(dist)]
        // SAFETY: `raw` came from `vae_dist_new` and is freed once.
        unsafe {
            ffi::vae_dist_free(self.raw)
        }
    }
}

/// A rendezvous store hosted by a launcher for its workers (`vae train --nproc`), as torchrun's
/// agent hosts one: it lives until dropped, so workers join it as clients.
#[derive(Debug)]
pub struct StoreServer {
    raw: *mut c_void,
    port: u16,
}

// SAFETY: the TCPStore server runs its own threads; the handle is only freed on drop.
#[allow(unsafe_code)]
unsafe impl Send for StoreServer {}

impl StoreServer {
    /// Hosts a store on a free port of this machine.
    #[cfg(dist)]
    #[allow(unsafe_code)]
    pub fn host() -> Result<Self> {
        let (mut raw, mut port) = (std::ptr::null_mut(), 0u16);
        // SAFETY: out-pointers to locals; an owned handle comes back on success.
        ffi::check(unsafe {
            ffi::vae_dist_store_host(
                0,
                COLLECTIVE_TIMEOUT.as_millis() as i64,
                &mut raw,
                &mut port,
            )
        })
        .map_err(|e| TrainError::Distributed(format!("cannot host the rendezvous store: {e}")))?;
        Ok(Self { raw, port })
    }

    /// Without libtorch's c10d: always an error.
    #[cfg(not(dist))]
    pub fn host() -> Result<Self> {
        Err(TrainError::Distributed(
            "this build of vae has no c10d process groups (vae info says why)".into(),
        ))
    }

    /// The port it listens on.
    pub fn port(&self) -> u16 {
        self.port
    }
}

impl Drop for StoreServer {
    #[allow(unsafe_code)]
    fn drop(&mut self) {
        #[cfg(dist)]
        // SAFETY: `raw` came from `vae_dist_store_host` and is freed once.
        unsafe {
            ffi::vae_dist_store_free(self.raw)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vars<'a>(pairs: &'a [(&'a str, &'a str)]) -> impl Fn(&str) -> Option<String> + 'a {
        move |k| {
            pairs
                .iter()
                .find(|(n, _)| *n == k)
                .map(|(_, v)| v.to_string())
        }
    }

    #[test]
    fn the_environment_is_read_as_torchrun_writes_it() {
        assert_eq!(Rendezvous::from_vars(vars(&[])).unwrap(), None);
        let r = Rendezvous::from_vars(vars(&[
            ("WORLD_SIZE", "4"),
            ("RANK", "0"),
            ("LOCAL_RANK", "0"),
            ("MASTER_ADDR", "10.0.0.2"),
            ("MASTER_PORT", "29501"),
            ("TORCHELASTIC_USE_AGENT_STORE", "True"),
            ("TORCHELASTIC_RESTART_COUNT", "2"),
        ]))
        .unwrap()
        .unwrap();
        assert_eq!((r.rank, r.world, r.port), (0, 4, 29501));
        assert!(!r.host_store, "the agent hosts the store");
        assert_eq!(r.prefix, "vae/2/");
        let plain = Rendezvous::from_vars(vars(&[("WORLD_SIZE", "2"), ("RANK", "0")]))
            .unwrap()
            .unwrap();
        assert!(plain.host_store, "without an agent, rank 0 hosts");
        for bad in [
            vec![("WORLD_SIZE", "2")],
            vec![("WORLD_SIZE", "0"), ("RANK", "0")],
            vec![("WORLD_SIZE", "2"), ("RANK", "2")],
            vec![("WORLD_SIZE", "2"), ("RANK", "x")],
            vec![("WORLD_SIZE", "2"), ("RANK", "1"), ("MASTER_PORT", "99999")],
        ] {
            let e = Rendezvous::from_vars(vars(&bad)).unwrap_err().to_string();
            assert!(
                e.contains("RANK") || e.contains("WORLD_SIZE") || e.contains("MASTER_PORT"),
                "{e}"
            );
        }
    }

    #[cfg(dist)]
    #[test]
    fn two_ranks_sum_and_broadcast_through_gloo() {
        let server = StoreServer::host().unwrap();
        let port = server.port();
        let ranks: Vec<_> = (0..2)
            .map(|rank| {
                std::thread::spawn(move || {
                    let r = Rendezvous {
                        addr: "127.0.0.1".into(),
                        port,
                        rank,
                        world: 2,
                        local_rank: rank,
                        host_store: false,
                        prefix: "test/".into(),
                    };
                    let g = ProcessGroup::join(&r, Device::Cpu).unwrap();
                    let t = Tensor::from_slice(&[1.0f32 + rank as f32, 10.0]);
                    g.all_reduce_sum(&t).unwrap();
                    let b = Tensor::from_slice(&[rank as f64 * 7.0]);
                    g.broadcast(&b, 1).unwrap();
                    if rank == 1 {
                        g.set("hello", b"from one").unwrap();
                    }
                    let got = g.get("hello").unwrap();
                    (Vec::<f32>::try_from(&t).unwrap(), b.double_value(&[0]), got)
                })
            })
            .collect();
        for h in ranks {
            let (sum, b, got) = h.join().unwrap();
            assert_eq!(sum, vec![3.0, 20.0]);
            assert_eq!(b, 7.0);
            assert_eq!(got, b"from one");
        }
    }

    /// The CUDA path on a machine without a GPU: NCCL's process group (or, in a build without
    /// it, the backend check) refuses with an error, never a crash.
    #[cfg(dist)]
    #[test]
    fn nccl_without_a_gpu_is_an_error() {
        if tch::Cuda::is_available() {
            return;
        }
        let server = StoreServer::host().unwrap();
        let r = Rendezvous {
            addr: "127.0.0.1".into(),
            port: server.port(),
            rank: 0,
            world: 1,
            local_rank: 0,
            host_store: false,
            prefix: "nccl/".into(),
        };
        match ProcessGroup::join(&r, Device::Cuda(0)) {
            Err(e) => assert!(
                e.to_string().contains("rank 0") || e.to_string().contains("CUDA"),
                "{e}"
            ),
            Ok(g) => {
                let t = Tensor::ones([4], (tch::Kind::Float, Device::Cpu));
                assert!(
                    g.all_reduce_sum(&t).is_err(),
                    "NCCL cannot sum without a GPU"
                );
            }
        }
    }
}
