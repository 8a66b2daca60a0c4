//! The trait methods both built-in kinds compute the same way from fields of the same names,
//! written once.

/// `VaeConfig`'s `build`, `validate`, `image_shape`, `set_image_shape`, `likelihood` and
/// `set_likelihood` for a config with fields `input_channels`, `input_height`,
/// `input_width` and `likelihood`, an inherent `validate`, and whose model `$model` has
/// `new(p, config)`.
macro_rules! config_basics {
    ($model:ident) => {
        fn build(&self, p: &tch::nn::Path<'_>) -> Result<Box<dyn Vae>, ModelError> {
            Ok(Box::new($model::new(p, self)?))
        }

        fn validate(&self) -> Result<(), ModelError> {
            Self::validate(self)
        }

        fn image_shape(&self) -> [i64; 3] {
            [self.input_channels, self.input_height, self.input_width]
        }

        fn set_image_shape(&mut self, [c, h, w]: [i64; 3]) {
            (self.input_channels, self.input_height, self.input_width) = (c, h, w);
        }

        fn likelihood(&self) -> Likelihood {
            self.likelihood
        }

        fn set_likelihood(&mut self, likelihood: Likelihood) {
            self.likelihood = likelihood;
        }
    };
}

/// `Vae`'s `config`, `device` and `set_compute_kind` for a model with fields `config`,
/// `device` and `compute` (f32 or bf16).
macro_rules! model_basics {
    () => {
        fn config(&self) -> ModelConfig {
            ModelConfig::new(self.config.clone())
        }

        fn device(&self) -> Device {
            self.device
        }

        fn set_compute_kind(&mut self, kind: Kind) -> Result<(), ModelError> {
            self.compute = crate::blocks::check_compute_kind(kind)?;
            Ok(())
        }
    };
}
