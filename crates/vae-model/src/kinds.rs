//! The model kinds a program knows: the built-in ones, and those it registers with
//! [`register_kind`]. A [`ModelConfig`] is read back through this list: its `kind` key picks
//! the kind whose [`VaeConfig`] parses the rest of the table.

use std::any::TypeId;
use std::sync::{LazyLock, PoisonError, RwLock};

use serde::Deserialize;

use crate::conv::ConvVaeConfig;
use crate::error::ModelError;
use crate::ladder::LadderVaeConfig;
use crate::vae::{ModelConfig, VaeConfig};

/// A known kind: its name, its configuration's type and how to read one.
struct Known {
    name: &'static str,
    type_id: TypeId,
    parse: fn(serde_json::Value) -> Result<ModelConfig, serde_json::Error>,
}

fn known<T: VaeConfig>() -> Known {
    Known {
        name: T::KIND,
        type_id: TypeId::of::<T>(),
        parse: |table| serde_json::from_value::<T>(table).map(ModelConfig::new),
    }
}

/// The built-in kinds, then the program's own.
static KINDS: LazyLock<RwLock<Vec<Known>>> =
    LazyLock::new(|| RwLock::new(vec![known::<ConvVaeConfig>(), known::<LadderVaeConfig>()]));

/// Makes the kind `T` known to this program, so that configuration files and checkpoints
/// naming `T::KIND` are read into a `T` ([`ModelConfig`]'s `Deserialize`). Registering the
/// same type again does nothing; another type under a name already taken is an error.
///
/// ```
/// # use vae_model::{ConvVaeConfig, register_kind};
/// register_kind::<ConvVaeConfig>()?; // built in: nothing to do
/// # Ok::<(), vae_model::ModelError>(())
/// ```
pub fn register_kind<T: VaeConfig>() -> Result<(), ModelError> {
    let mut kinds = KINDS.write().unwrap_or_else(PoisonError::into_inner);
    match kinds.iter().find(|k| k.name == T::KIND) {
        Some(k) if k.type_id == TypeId::of::<T>() => Ok(()),
        Some(_) => Err(ModelError::InvalidConfig(format!(
            "the model kind `{}` is already registered for another configuration type; choose another name",
            T::KIND
        ))),
        None => {
            kinds.push(known::<T>());
            Ok(())
        }
    }
}

/// The names of the kinds this program knows, the built-in ones first.
pub fn registered_kinds() -> Vec<&'static str> {
    let kinds = KINDS.read().unwrap_or_else(PoisonError::into_inner);
    kinds.iter().map(|k| k.name).collect()
}

impl Default for ModelConfig {
    /// The reference conv VAE ([`ConvVaeConfig::default`]).
    fn default() -> Self {
        Self::new(ConvVaeConfig::default())
    }
}

impl<'de> Deserialize<'de> for ModelConfig {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        use serde::de::Error;
        let mut table = serde_json::Value::deserialize(d)?;
        let Some(map) = table.as_object_mut() else {
            return Err(D::Error::custom("a model is a table with a `kind` key"));
        };
        let kind = match map.remove("kind") {
            Some(serde_json::Value::String(kind)) => kind,
            Some(other) => {
                return Err(D::Error::custom(format!(
                    "a model's `kind` is a name, got {other}"
                )));
            }
            None => return Err(D::Error::missing_field("kind")),
        };
        let parse = {
            let kinds = KINDS.read().unwrap_or_else(PoisonError::into_inner);
            kinds.iter().find(|k| k.name == kind).map(|k| k.parse)
        };
        let Some(parse) = parse else {
            return Err(D::Error::custom(format!(
                "unknown model kind `{kind}`: this program knows {}; a kind defined outside \
                 vae-rs must be registered (vae_model::register_kind) before its configs and \
                 checkpoints are read",
                registered_kinds()
                    .iter()
                    .map(|k| format!("`{k}`"))
                    .collect::<Vec<_>>()
                    .join(", ")
            )));
        };
        parse(table).map_err(D::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use serde::{Deserialize, Serialize};
    use tch::nn;

    use super::*;
    use crate::likelihood::Likelihood;
    use crate::vae::Vae;

    /// A kind that exists only to be registered and read back.
    #[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Toy {
        width: i64,
        hidden: Option<i64>,
        likelihood: Likelihood,
    }

    impl VaeConfig for Toy {
        const KIND: &'static str = "toy";
        fn build(&self, _: &nn::Path<'_>) -> Result<Box<dyn Vae>, ModelError> {
            Err(ModelError::InvalidConfig("a toy builds nothing".into()))
        }
        fn image_shape(&self) -> [i64; 3] {
            [1, self.width, self.width]
        }
        fn set_image_shape(&mut self, [_, h, _]: [i64; 3]) {
            self.width = h;
        }
        fn latent_dim(&self) -> i64 {
            2
        }
        fn likelihood(&self) -> Likelihood {
            self.likelihood
        }
        fn set_likelihood(&mut self, likelihood: Likelihood) {
            self.likelihood = likelihood;
        }
    }

    /// The same name, another type.
    #[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
    struct Impostor;

    impl VaeConfig for Impostor {
        const KIND: &'static str = "toy";
        fn build(&self, _: &nn::Path<'_>) -> Result<Box<dyn Vae>, ModelError> {
            Err(ModelError::InvalidConfig("nothing".into()))
        }
        fn image_shape(&self) -> [i64; 3] {
            [1, 1, 1]
        }
        fn set_image_shape(&mut self, _: [i64; 3]) {}
        fn latent_dim(&self) -> i64 {
            1
        }
        fn likelihood(&self) -> Likelihood {
            Likelihood::Bernoulli
        }
        fn set_likelihood(&mut self, _: Likelihood) {}
    }

    #[test]
    fn a_registered_kind_is_read_back_and_an_unknown_one_is_named() {
        let text = "[model]\nkind = \"toy\"\nwidth = 12\nlikelihood = { kind = \"bernoulli\" }\n";
        #[derive(Debug, Deserialize)]
        struct Run {
            model: ModelConfig,
        }
        // Not yet registered: one sentence naming the kind and those known.
        if !registered_kinds().contains(&"toy") {
            let e = toml::from_str::<Run>(text).unwrap_err().to_string();
            assert!(
                e.contains("unknown model kind `toy`: this program knows `conv`, `ladder`"),
                "{e}"
            );
        }
        register_kind::<Toy>().unwrap();
        register_kind::<Toy>().unwrap(); // again: nothing to do
        let e = register_kind::<Impostor>().unwrap_err().to_string();
        assert!(e.contains("`toy` is already registered"), "{e}");
        assert_eq!(registered_kinds()[..2], ["conv", "ladder"]);

        let run: Run = toml::from_str(text).unwrap();
        let toy = Toy {
            width: 12,
            hidden: None,
            likelihood: Likelihood::Bernoulli,
        };
        assert_eq!(run.model.kind(), "toy");
        assert_eq!(run.model.get::<Toy>(), Some(&toy));
        assert_eq!(run.model.image_shape(), [1, 12, 12]);
        // Written back with its kind first, through TOML and JSON alike.
        let json = serde_json::to_string(&run.model).unwrap();
        assert!(
            json.starts_with(r#"{"kind":"toy","width":12,"hidden":null"#),
            "{json}"
        );
        let again: ModelConfig = serde_json::from_str(&json).unwrap();
        assert_eq!(again, run.model);
        assert_ne!(again, ModelConfig::default());
        let toml_text = toml::to_string(&run.model).unwrap();
        assert!(
            toml_text.starts_with("kind = \"toy\"\nwidth = 12\n"),
            "{toml_text}"
        );
        // Its own keys are checked by its own rules.
        let bad = text.replace("width = 12", "width = 12\ndepth = 3");
        let e = toml::from_str::<Run>(&bad).unwrap_err().to_string();
        assert!(e.contains("unknown field `depth`"), "{e}");
    }
}
