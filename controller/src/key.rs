//! The key of every namespaced object the controller keeps: a leaf, so that
//! the index and the Gateway API translation it feeds name it from one
//! place without importing each other.

/// `(namespace, name)`; the namespace is empty for cluster-scoped objects.
pub type Key = (String, String);
