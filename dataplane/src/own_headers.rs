//! The header fields Sluice writes into responses: a leaf, so that the
//! proxy that writes them and the spans that read them back name them from
//! one place without importing each other.

/// Header naming why Sluice answered a request itself.
pub const ERROR_HEADER: &str = "x-sluice-error";

/// Header with the number of tries a response took, when more than one.
pub const ATTEMPTS_HEADER: &str = "x-sluice-attempts";
