use std::path::PathBuf;

/// What can go wrong training, checkpointing or evaluating.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TrainError {
    /// Reading the dataset failed.
    #[error(transparent)]
    Data(#[from] vae_data::DataError),
    /// Building or calling the model failed.
    #[error(transparent)]
    Model(#[from] vae_model::ModelError),
    /// libtorch reported an error.
    #[error("libtorch failed: {0}")]
    Torch(tch::TchError),
    /// A file or folder could not be read, written or created.
    #[error("cannot {action} {}: {cause}", path.display())]
    Io {
        /// What was being done: `read`, `create the run directory`, …
        action: &'static str,
        /// The file or folder.
        path: PathBuf,
        /// The operating system's error (said in the message, so not also a `source`).
        cause: std::io::Error,
    },
    /// The run directory cannot be used as asked (resuming a folder without a run, starting a
    /// run where one is).
    #[error("{0}")]
    RunDirectory(String),
    /// Another process holds the run directory.
    #[error(
        "{} is in use by another vae process{}; wait for it to finish, or stop it",
        path.display(),
        pid.map(|p| format!(" (pid {p})")).unwrap_or_default()
    )]
    Busy {
        /// The run directory.
        path: PathBuf,
        /// The holder's process id, as it wrote it into the lock file.
        pid: Option<u32>,
    },
    /// A checkpoint is damaged, incomplete or of another model.
    #[error("{}: {reason}", path.display())]
    Checkpoint {
        /// The checkpoint file.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// The loss became NaN or infinite.
    #[error(
        "training diverged: the loss became {value} at epoch {epoch}, step {step}; the last good checkpoint is kept (try a lower learning rate or gradient clipping)"
    )]
    NonFinite {
        /// Epoch (1-based) of the offending step.
        epoch: usize,
        /// Global step (1-based).
        step: u64,
        /// The loss read.
        value: f64,
    },
    /// A setting is out of range.
    #[error("invalid training configuration: {0}")]
    InvalidConfig(String),
    /// The requested device cannot be used.
    #[error("{0}")]
    Device(String),
    /// Training on several processes failed: the rendezvous, a collective, or ranks that
    /// disagree.
    #[error("{0}")]
    Distributed(String),
    /// libtorch's profiler could not start or write its trace.
    #[error("{0}")]
    Profiler(String),
}

impl From<tch::TchError> for TrainError {
    fn from(e: tch::TchError) -> Self {
        Self::Torch(e)
    }
}

/// `Result` with [`TrainError`].
pub type Result<T, E = TrainError> = std::result::Result<T, E>;
