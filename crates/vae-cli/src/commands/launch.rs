//! `vae train --nproc N`: starts N workers of this machine as `torchrun --nproc-per-node N
//! --no-python vae train ...` would, for machines without torchrun.
//!
//! Like torchrun's agent, the launcher hosts the rendezvous store and gives each worker the
//! variables torchrun sets (`RANK`, `LOCAL_RANK`, `WORLD_SIZE`, `MASTER_ADDR`, `MASTER_PORT`,
//! `TORCHELASTIC_USE_AGENT_STORE=True`, ...), so a worker has one code path under either. It
//! watches them: a worker that exits with an error, or is killed, ends the job (the others are
//! sent SIGTERM, then SIGKILL); SIGINT is passed on to every worker, which finish the same step
//! and write a checkpoint (rank 0), and any still running after [`INTERRUPT_GRACE`] is killed.

use std::ffi::OsString;
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::process::{Child, Command, ExitStatus};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use vae_train::StoreServer;

use crate::EXIT_INTERRUPTED;

/// How long workers have to stop after an interrupt before they are killed.
const INTERRUPT_GRACE: Duration = Duration::from_secs(9);
/// How long workers have to stop after SIGTERM (another rank failed) before SIGKILL.
const TERM_GRACE: Duration = Duration::from_secs(5);

/// The command line without `--nproc N` (or `--nproc=N`): what each worker runs.
fn worker_args(args: &[OsString]) -> Vec<OsString> {
    let mut out = Vec::with_capacity(args.len());
    let mut skip = false;
    for a in args {
        if skip {
            skip = false;
            continue;
        }
        match a.to_str() {
            Some("--nproc") => skip = true,
            Some(s) if s.starts_with("--nproc=") => {}
            _ => out.push(a.clone()),
        }
    }
    out
}

/// How a worker ended, in words.
fn describe(status: ExitStatus) -> String {
    match (status.code(), status.signal()) {
        (Some(c), _) => format!("exited with status {c}"),
        (None, Some(s)) => format!("was killed by signal {s}"),
        _ => "ended".into(),
    }
}

#[allow(unsafe_code)]
fn signal(child: &Child, sig: i32) {
    // SAFETY: kill(2) on the pid of a child we have not yet reaped (so it cannot be reused).
    unsafe {
        libc::kill(child.id() as libc::pid_t, sig);
    }
}

/// Runs `nproc` workers of `vae train` (this command line without `--nproc`) and returns the
/// job's exit status: 0 when every worker finished, 130 after an interrupt, 1 when one failed.
pub fn run(nproc: usize, threads_given: bool) -> Result<u8> {
    let store = StoreServer::host().context("vae train --nproc cannot start")?;
    let exe = std::env::current_exe().context("cannot find the vae executable")?;
    let args = worker_args(&std::env::args_os().skip(1).collect::<Vec<_>>());
    // As torchrun, but from this machine's cores: each worker gets its share of threads,
    // unless OMP_NUM_THREADS or --threads says otherwise.
    let omp = std::env::var_os("OMP_NUM_THREADS").is_none() && !threads_given;
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let per_worker = (cores / nproc).max(1);

    let interrupted = Arc::new(AtomicBool::new(false));
    let flag = Arc::clone(&interrupted);
    ctrlc::set_handler(move || flag.store(true, Ordering::SeqCst))
        .context("cannot install the interrupt handler")?;

    eprintln!(
        "vae train --nproc {nproc}: {nproc} workers on this machine, rendezvous at 127.0.0.1:{}",
        store.port()
    );
    let mut workers: Vec<Option<Child>> = Vec::with_capacity(nproc);
    for rank in 0..nproc {
        let mut cmd = Command::new(&exe);
        cmd.args(&args)
            .env("RANK", rank.to_string())
            .env("LOCAL_RANK", rank.to_string())
            .env("GROUP_RANK", "0")
            .env("WORLD_SIZE", nproc.to_string())
            .env("LOCAL_WORLD_SIZE", nproc.to_string())
            .env("MASTER_ADDR", "127.0.0.1")
            .env("MASTER_PORT", store.port().to_string())
            .env("TORCHELASTIC_USE_AGENT_STORE", "True")
            .env("TORCHELASTIC_RESTART_COUNT", "0");
        if omp {
            cmd.env("OMP_NUM_THREADS", per_worker.to_string());
        }
        // Workers get signals from the launcher alone (a terminal's Ctrl-C reaches only the
        // launcher, which passes it on once), and die with it.
        cmd.process_group(0);
        // SAFETY: prctl is async-signal-safe; nothing else runs between fork and exec.
        #[allow(unsafe_code)]
        unsafe {
            cmd.pre_exec(|| {
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM);
                Ok(())
            });
        }
        match cmd.spawn() {
            Ok(child) => workers.push(Some(child)),
            Err(e) => {
                stop_all(&mut workers, libc::SIGTERM, TERM_GRACE);
                bail!("cannot start worker {rank} ({}): {e}", exe.display());
            }
        }
    }
    supervise(&mut workers, &interrupted)
}

/// Waits for the workers, ending the job as the module says.
fn supervise(workers: &mut [Option<Child>], interrupted: &AtomicBool) -> Result<u8> {
    let mut interrupt_deadline: Option<Instant> = None;
    loop {
        if interrupted.load(Ordering::SeqCst) && interrupt_deadline.is_none() {
            eprintln!(
                "\ninterrupt: every worker finishes the current step and rank 0 writes a checkpoint"
            );
            for w in workers.iter().flatten() {
                signal(w, libc::SIGINT);
            }
            interrupt_deadline = Some(Instant::now() + INTERRUPT_GRACE);
        }
        for (rank, slot) in workers.iter_mut().enumerate() {
            let Some(child) = slot else { continue };
            if let Some(status) = child.try_wait().context("cannot wait for a worker")? {
                *slot = None;
                // After an interrupt every ending is expected (a worker still starting up
                // has no handler yet, and dies of the SIGINT).
                if !status.success() && interrupt_deadline.is_none() {
                    eprintln!(
                        "error: rank {rank} {}, so the job stops: the other ranks are being stopped (its messages above say why; `vae train --resume` continues from the last checkpoint)",
                        describe(status)
                    );
                    stop_all(workers, libc::SIGTERM, TERM_GRACE);
                    return Ok(1);
                }
            }
        }
        if workers.iter().all(Option::is_none) {
            return Ok(if interrupt_deadline.is_some() {
                EXIT_INTERRUPTED
            } else {
                0
            });
        }
        if interrupt_deadline.is_some_and(|d| Instant::now() > d) {
            eprintln!("error: workers still running after the interrupt were killed");
            stop_all(workers, libc::SIGKILL, Duration::ZERO);
            return Ok(EXIT_INTERRUPTED);
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Sends `sig` to every running worker, waits up to `grace` for them, then kills the rest.
fn stop_all(workers: &mut [Option<Child>], sig: i32, grace: Duration) {
    for w in workers.iter().flatten() {
        signal(w, sig);
    }
    let deadline = Instant::now() + grace;
    while Instant::now() < deadline
        && workers
            .iter_mut()
            .flatten()
            .any(|c| matches!(c.try_wait(), Ok(None)))
    {
        std::thread::sleep(Duration::from_millis(50));
    }
    for w in workers.iter_mut().flatten() {
        let _ = w.kill();
        let _ = w.wait();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn workers_run_the_command_line_without_nproc() {
        let a = |v: &[&str]| v.iter().map(OsString::from).collect::<Vec<_>>();
        assert_eq!(
            worker_args(&a(&["train", "--nproc", "2", "--out", "r", "--nproc=3"])),
            a(&["train", "--out", "r"])
        );
    }
}
