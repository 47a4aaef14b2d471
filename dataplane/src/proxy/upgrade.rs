//! `Upgrade` pass-through (WebSocket and any other protocol an HTTP/1.1
//! client switches to): the request keeps its `Upgrade` and `Connection:
//! upgrade` headers on the way to the endpoint, and when the endpoint
//! answers `101 Switching Protocols` the two connections are joined into a
//! byte tunnel ([`crate::proxy::tunnel`]: a side's close is passed on to the
//! other) that lasts until both sides have closed, either fails, or
//! neither side has sent a byte for a whole `timeouts.idle` of the pool (then both
//! connections are closed, between one and two periods after the last
//! byte: HAProxy's `timeout tunnel` works so, and nginx's
//! `proxy_read_timeout` closes its WebSockets likewise; without it a
//! client could hold an endpoint connection, and its place in
//! `maxConnections`, for ever by saying nothing).
//!
//! A tunnel counts as in flight on its endpoint while it is open. It is not
//! an HTTP request any more: the shutdown's grace period does not wait for
//! it, and it ends with the process. HTTP/2 extended CONNECT (RFC 8441,
//! WebSocket over HTTP/2) is not supported; such clients fall back to
//! HTTP/1.1.

use std::sync::Arc;
use std::time::Duration;

use http::header::{self, HeaderMap, HeaderValue};
use http::{StatusCode, Version};
use hyper::upgrade::OnUpgrade;
use hyper_util::rt::TokioIo;
use tokio::io::AsyncWriteExt;

use crate::endpoint::Endpoint;
use crate::proxy::tunnel;
use crate::upstream::ResponseBody;

/// The protocol an HTTP/1.1 request asks to switch to: its `Upgrade`
/// header, when its `Connection` header names `upgrade`.
pub fn requested(version: Version, headers: &HeaderMap) -> Option<HeaderValue> {
    if version != Version::HTTP_11 {
        return None;
    }
    let upgrade = headers.get(header::UPGRADE)?;
    let asks = headers.get_all(header::CONNECTION).iter().any(|v| {
        v.to_str().is_ok_and(|v| {
            v.split(',')
                .any(|t| t.trim().eq_ignore_ascii_case("upgrade"))
        })
    });
    asks.then(|| upgrade.clone())
}

/// Puts back the headers that ask for (or accept) a protocol switch, after
/// the hop-by-hop headers were removed.
pub fn keep(headers: &mut HeaderMap, protocol: HeaderValue) {
    headers.insert(header::UPGRADE, protocol);
    headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
}

/// A client request that asked to switch protocols.
#[derive(Debug)]
pub struct Pending {
    client: OnUpgrade,
    protocol: HeaderValue,
}

/// Takes the client's side of the upgrade out of an upgrade request, to be
/// joined with the endpoint's by [`switch`].
pub fn take(parts: &mut http::request::Parts) -> Option<Pending> {
    let protocol = requested(parts.version, &parts.headers)?;
    let client = parts.extensions.remove::<OnUpgrade>()?;
    Some(Pending { client, protocol })
}

/// When the endpoint answered 101 to a pending upgrade: puts the upgrade
/// headers back on the response (they were stripped as hop-by-hop) and
/// starts the tunnel between the two connections: the endpoint's, taken
/// from the response `body`, and the client's, once hyper has handed it
/// over after sending the response. `idle`: the pool's `timeouts.idle`.
pub fn switch(
    pending: Option<Pending>,
    parts: &mut http::response::Parts,
    body: &mut ResponseBody,
    endpoint: &Arc<Endpoint>,
    idle: Duration,
) {
    let Some(pending) = pending else { return };
    if parts.status != StatusCode::SWITCHING_PROTOCOLS {
        return;
    }
    let Some(upstream) = body.take_upgraded() else {
        return;
    };
    keep(&mut parts.headers, pending.protocol);
    let in_flight = endpoint.begin();
    tokio::spawn(async move {
        let _in_flight = in_flight;
        // The connection keeps its place in `maxConnections` while open.
        let Some((upstream, early, _slot)) = (*upstream).into_tunnel() else {
            tracing::debug!("upgrade not completed: the request body was still being sent");
            return;
        };
        let mut client = match pending.client.await {
            Ok(c) => TokioIo::new(c),
            Err(e) => {
                tracing::debug!(error = %e, "upgrade not completed");
                return;
            }
        };
        // What the endpoint sent right after its 101 goes first.
        if !early.is_empty()
            && let Err(e) = client.write_all(&early).await
        {
            tracing::debug!(error = %e, "tunnel ended with an error");
            return;
        }
        match tunnel::run(client, upstream, idle).await {
            tunnel::Ended::Closed { up, down } => tracing::debug!(up, down, "tunnel closed"),
            tunnel::Ended::Failed(e) => tracing::debug!(error = %e, "tunnel ended with an error"),
            tunnel::Ended::Idle => tracing::debug!(?idle, "tunnel closed: silent both ways"),
        }
    });
}
