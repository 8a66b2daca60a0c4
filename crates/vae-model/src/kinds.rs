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
