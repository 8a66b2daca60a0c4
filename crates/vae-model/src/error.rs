/// What can go wrong building or calling a model.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ModelError {
    /// The configuration cannot describe a working model.
    #[error("invalid model configuration: {0}")]
    InvalidConfig(String),
    /// A tensor of the wrong shape or kind was passed in.
    #[error("{what}: expected shape {expected}, got {found:?}")]
    Shape {
        /// Which argument.
        what: &'static str,
        /// The expected shape, e.g. `[N, 1, 28, 28]`.
        expected: String,
        /// The shape passed.
        found: Vec<i64>,
    },
    /// An argument is outside its range (k = 0 samples, ...).
    #[error("{0}")]
    InvalidArgument(String),
    /// libtorch reported an error.
    #[error("libtorch failed: {0}")]
    Torch(tch::TchError),
}

impl From<tch::TchError> for ModelError {
    fn from(e: tch::TchError) -> Self {
        Self::Torch(e)
    }
}
