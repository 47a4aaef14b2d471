//! The clients' side: listening sockets and their connections
//! ([`listener`]), TLS termination ([`tls`]) and the worker threads that
//! accept and serve them ([`workers`]).

pub mod listener;
pub mod tls;
pub mod workers;
