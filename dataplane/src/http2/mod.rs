//! HTTP/2 from clients: [`server`] serves a connection's streams on the
//! `h2` crate, forwarding endpoints' interim responses; [`read_ahead`]
//! makes its reads big while a client streams to it. (Endpoints are
//! always spoken to in HTTP/1.1: there is no client side here.)

pub mod read_ahead;
pub mod server;
