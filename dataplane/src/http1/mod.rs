//! HTTP/1.1, by direction: [`server`] reads clients' requests and writes
//! their responses, [`client`] writes requests to endpoints and reads their
//! responses; [`interim`] relays 1xx responses on hyper's server side and
//! [`head_timeout`] bounds the wait for a request head.

pub mod client;
pub mod head_timeout;
pub mod interim;
pub mod server;
