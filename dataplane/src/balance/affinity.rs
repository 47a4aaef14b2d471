//! Cookie session affinity (`sessionAffinity`).
//!
//! The cookie names the endpoint by an id, not by its address: 16 hex digits
//! of xxh3 of the address keyed by the pool's name. Every dataplane computes
//! the same id (a cookie set by one works on all of them) and it stays the
//! same across table versions for as long as the endpoint stays. It hides
//! the address from casual reading; it is not a secret (a client choosing
//! its endpoint by forging a cookie only reaches an endpoint of the pool).
//! Ids and `Set-Cookie` values are computed when the pool is built, so a
//! request costs a cookie scan and a binary search.

use std::net::SocketAddr;

use http::{HeaderMap, HeaderValue};
use sluice_protocol::SessionAffinity;
use xxhash_rust::xxh3::{xxh3_64, xxh3_64_with_seed};

use super::key::cookie;

/// The affinity of one pool.
#[derive(Debug)]
pub struct Affinity {
    name: String,
    /// `(id, endpoint index)`, sorted by id.
    by_id: Box<[(u64, u32)]>,
    /// `(address, endpoint index)`, sorted by address.
    by_addr: Box<[(SocketAddr, u32)]>,
    /// `Set-Cookie` value per endpoint index.
    set_cookie: Box<[HeaderValue]>,
}

/// The id of endpoint `addr` in pool `pool`.
pub fn endpoint_id(pool: &str, addr: &SocketAddr) -> u64 {
    xxh3_64_with_seed(addr.to_string().as_bytes(), xxh3_64(pool.as_bytes()))
}

impl Affinity {
    /// The affinity of pool `pool` over its endpoints `addrs`.
    pub fn new(policy: &SessionAffinity, pool: &str, addrs: &[SocketAddr]) -> Self {
        let ids: Vec<u64> = addrs.iter().map(|a| endpoint_id(pool, a)).collect();
        let mut by_id: Vec<(u64, u32)> = ids
            .iter()
            .enumerate()
            .map(|(i, id)| (*id, i as u32))
            .collect();
        by_id.sort_unstable();
        let mut by_addr: Vec<(SocketAddr, u32)> = addrs
            .iter()
            .enumerate()
            .map(|(i, a)| (*a, i as u32))
            .collect();
        by_addr.sort_unstable();
        let max_age = policy
            .ttl
            .map(|ttl| format!("; Max-Age={}", ttl.get().as_secs()))
            .unwrap_or_default();
        let set_cookie = ids
            .iter()
            .map(|id| {
                let value = format!(
                    "{}={id:016x}; Path=/; HttpOnly{max_age}",
                    policy.cookie_name
                );
                // The protocol validates the cookie name as a token.
                HeaderValue::from_str(&value).unwrap_or_else(|_| HeaderValue::from_static(""))
            })
            .collect();
        Self {
            name: policy.cookie_name.clone(),
            by_id: by_id.into_boxed_slice(),
            by_addr: by_addr.into_boxed_slice(),
            set_cookie,
        }
    }

    /// The endpoint index the request's cookie names, if it names one.
    pub fn sticky(&self, headers: &HeaderMap) -> Option<u32> {
        let value = cookie(headers, &self.name)?;
        if value.len() != 16 {
            return None;
        }
        let id = u64::from_str_radix(value, 16).ok()?;
        let i = self.by_id.binary_search_by_key(&id, |(id, _)| *id).ok()?;
        Some(self.by_id[i].1)
    }

    /// The `Set-Cookie` value naming endpoint `addr`.
    pub fn set_cookie(&self, addr: &SocketAddr) -> Option<&HeaderValue> {
        let i = self.by_addr.binary_search_by_key(addr, |(a, _)| *a).ok()?;
        self.set_cookie.get(self.by_addr[i].1 as usize)
    }

    /// The endpoint index of `addr`.
    pub fn index(&self, addr: &SocketAddr) -> Option<u32> {
        let i = self.by_addr.binary_search_by_key(addr, |(a, _)| *a).ok()?;
        Some(self.by_addr[i].1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addrs() -> Vec<SocketAddr> {
        (1..=3)
            .map(|p| SocketAddr::from(([127, 0, 0, 1], p)))
            .collect()
    }

    #[test]
    fn the_cookie_round_trips_to_its_endpoint() {
        let policy = SessionAffinity {
            cookie_name: "sticky".into(),
            ttl: Some(sluice_protocol::Duration::from_secs(3600)),
        };
        let a = Affinity::new(&policy, "shop/web", &addrs());
        let set = a
            .set_cookie(&addrs()[1])
            .expect("known")
            .to_str()
            .expect("ascii");
        assert!(set.starts_with("sticky="), "{set}");
        assert!(set.ends_with("; Path=/; HttpOnly; Max-Age=3600"), "{set}");
        assert!(!set.contains("127.0.0.1"));
        let pair = set.split(';').next().expect("pair");
        let mut headers = HeaderMap::new();
        headers.insert(
            "cookie",
            HeaderValue::from_str(&format!("x=1; {pair}")).expect("value"),
        );
        assert_eq!(a.sticky(&headers), Some(1));
        // Another pool's ids differ; garbage is ignored.
        let other = Affinity::new(&policy, "shop/api", &addrs());
        assert_eq!(other.sticky(&headers), None);
        headers.insert("cookie", HeaderValue::from_static("sticky=zz"));
        assert_eq!(a.sticky(&headers), None);
    }

    #[test]
    fn ids_do_not_depend_on_the_other_endpoints() {
        let all = addrs();
        assert_eq!(endpoint_id("p", &all[2]), endpoint_id("p", &all[2]));
        let policy = SessionAffinity::default();
        let a = Affinity::new(&policy, "p", &all);
        let b = Affinity::new(&policy, "p", &all[1..]);
        assert_eq!(a.set_cookie(&all[2]), b.set_cookie(&all[2]));
    }
}
