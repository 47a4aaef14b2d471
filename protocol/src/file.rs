//! The standalone dataplane's file: pools ([`crate::route`]) and the rules
//! that send requests to them ([`crate::http_route`]), parsed and validated
//! as one.

use serde::{Deserialize, Serialize};

use crate::http_route::{HttpRoute, validate_routes};
use crate::route::{PoolRoute, RouteError, is_false, validate_pools};

/// The standalone dataplane's file: `{pools: [PoolRoute], routes:
/// [HttpRoute], allowEmpty: bool}`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RouteFile {
    /// Every pool the dataplane serves.
    #[serde(default)]
    pub pools: Vec<PoolRoute>,
    /// Rules sending requests to the pools by name.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub routes: Vec<HttpRoute>,
    /// The author means an empty `pools` list even when it replaces a table
    /// in service. Without it a reload that lists no pools is refused: a
    /// truncated or half-written file must not take every route away.
    #[serde(default, rename = "allowEmpty", skip_serializing_if = "is_false")]
    pub allow_empty: bool,
}

impl RouteFile {
    /// Parses and validates a standalone file.
    pub fn from_yaml(text: &str) -> Result<Self, RouteError> {
        let file: RouteFile =
            serde_saphyr::from_str(text).map_err(|e| RouteError::Yaml(e.to_string()))?;
        validate_pools(&file.pools)?;
        validate_routes(&file.routes)?;
        Ok(file)
    }
}
