//! HTTP/1.1, by direction: [`server`] reads clients' requests and writes
//! their responses, [`client`] writes requests to endpoints and reads their
//! responses; [`body`] frames message bodies both ways, [`common`] holds
//! what both directions share, [`interim`] carries 1xx responses from the
//! client side to the server side, and [`head_timeout`] bounds the wait
//! for a request head. The codec knows nothing of routing or forwarding
//! policy: what the proxy adds to a request head comes in through
//! [`client::ExtraFields`].

pub mod body;
pub mod client;
pub mod common;
pub mod head_timeout;
pub mod interim;
pub mod server;
