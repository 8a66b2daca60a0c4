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
    #[error("libtorch: {0}")]
    Torch(#[from] tch::TchError),
    /// A file could not be read or written.
    #[error("{}: {source}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// The operating system's error.
        #[source]
        source: std::io::Error,
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
}

/// `Result` with [`TrainError`].
pub type Result<T, E = TrainError> = std::result::Result<T, E>;
