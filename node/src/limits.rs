//! Limits that keep one client from taking a node from everyone else: connection caps
//! and timeouts per listener (applied in [`crate::net::serve`]) and request rates per
//! API key and per source address (applied by the client API).
//!
//! Rates use GCRA (the generic cell rate algorithm): one timestamp per key, the time at
//! which the key's bucket would be empty again. A request conforms when that time is no
//! further ahead than the burst allows. Buckets are in memory on the node that serves
//! the request (the leader, for every route that changes or reads the vault), so a
//! leader change starts them afresh: a limit is a bound on abuse, not an account.

use crate::setting::InvalidSetting;
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::hash::{Hash, Hasher};
use std::sync::Mutex;
use std::time::Duration;

/// `[limits]`: listener bounds and request rates.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LimitSettings {
    /// Bound on a new connection's TLS handshake and first request head together
    /// (from the accept), and on a connection without a request in hand (waiting for
    /// a head, however slowly it comes, or idle between requests): slow-loris clients
    /// are closed after it.
    pub header_read_timeout_ms: u64,
    /// Most connections open at once on the client API listener.
    pub api_connections_max: usize,
    /// Most client API connections from one source address.
    pub api_connections_per_address_max: usize,
    /// Most connections open at once on the peer listener.
    pub peer_connections_max: usize,
    /// Most connections open at once on the admin listener.
    pub admin_connections_max: usize,
    /// Requests per second per API key (secret or publishable), sustained.
    pub requests_per_key_per_s: u32,
    /// Requests one key may send at once above its sustained rate.
    pub requests_per_key_burst: u32,
    /// Requests per second per source address, sustained (before authentication).
    pub requests_per_address_per_s: u32,
    /// Requests one address may send at once above its sustained rate.
    pub requests_per_address_burst: u32,
    /// One-time tokens per second one publishable key may create (browsers).
    pub one_time_tokens_per_publishable_key_per_s: u32,
    /// One-time tokens one publishable key may create at once.
    pub one_time_tokens_per_publishable_key_burst: u32,
    /// One-time tokens per second one source address may create with a publishable key.
    pub one_time_tokens_per_address_per_s: u32,
    /// One-time tokens one source address may create at once with a publishable key.
    pub one_time_tokens_per_address_burst: u32,
    /// Share of the CVC store one merchant may hold, in percent.
    pub cvc_share_per_merchant_percent: u8,
}

impl Default for LimitSettings {
    fn default() -> Self {
        LimitSettings {
            header_read_timeout_ms: 10_000,
            api_connections_max: 4_096,
            api_connections_per_address_max: 1_024,
            peer_connections_max: 1_024,
            admin_connections_max: 128,
            requests_per_key_per_s: 1_000,
            requests_per_key_burst: 2_000,
            requests_per_address_per_s: 2_000,
            requests_per_address_burst: 4_000,
            one_time_tokens_per_publishable_key_per_s: 100,
            one_time_tokens_per_publishable_key_burst: 200,
            one_time_tokens_per_address_per_s: 1,
            one_time_tokens_per_address_burst: 10,
            cvc_share_per_merchant_percent: 25,
        }
    }
}

impl LimitSettings {
    /// Checks the settings; the error names the key.
    pub fn validate(&self) -> Result<(), InvalidSetting> {
        if !(100..=600_000).contains(&self.header_read_timeout_ms) {
            return Err(InvalidSetting::new(
                "limits.header_read_timeout_ms",
                "must be between 100 and 600000",
            ));
        }
        for (key, v) in [
            ("api_connections_max", self.api_connections_max),
            (
                "api_connections_per_address_max",
                self.api_connections_per_address_max,
            ),
            ("peer_connections_max", self.peer_connections_max),
            ("admin_connections_max", self.admin_connections_max),
        ] {
            if !(1..=1_000_000).contains(&v) {
                return Err(InvalidSetting::new(
                    format!("limits.{key}"),
                    "must be between 1 and 1000000",
                ));
            }
        }
        // Followers forward requests to the leader over pooled connections from their
        // own address: a per-address cap below the pool's size would refuse them.
        if self.api_connections_per_address_max < 300 {
            return Err(InvalidSetting::new(
                "limits.api_connections_per_address_max",
                "must be at least 300 (followers forward over up to 256 pooled connections)",
            ));
        }
        for (key, v) in [
            ("requests_per_key_per_s", self.requests_per_key_per_s),
            ("requests_per_key_burst", self.requests_per_key_burst),
            (
                "requests_per_address_per_s",
                self.requests_per_address_per_s,
            ),
            (
                "requests_per_address_burst",
                self.requests_per_address_burst,
            ),
            (
                "one_time_tokens_per_publishable_key_per_s",
                self.one_time_tokens_per_publishable_key_per_s,
            ),
            (
                "one_time_tokens_per_publishable_key_burst",
                self.one_time_tokens_per_publishable_key_burst,
            ),
            (
                "one_time_tokens_per_address_per_s",
                self.one_time_tokens_per_address_per_s,
            ),
            (
                "one_time_tokens_per_address_burst",
                self.one_time_tokens_per_address_burst,
            ),
        ] {
            if v == 0 {
                return Err(InvalidSetting::new(
                    format!("limits.{key}"),
                    "must be at least 1",
                ));
            }
        }
        if !(1..=100).contains(&self.cvc_share_per_merchant_percent) {
            return Err(InvalidSetting::new(
                "limits.cvc_share_per_merchant_percent",
                "must be between 1 and 100",
            ));
        }
        Ok(())
    }

    /// The header-read (and idle, and handshake) bound.
    pub fn header_read_timeout(&self) -> Duration {
        Duration::from_millis(self.header_read_timeout_ms)
    }
}

/// A rate: so many per second, with a burst.
#[derive(Debug, Clone, Copy)]
pub struct Rate {
    /// Nanoseconds between two conforming requests at the sustained rate.
    interval_ns: u64,
    /// How far ahead of now a key's bucket may run (burst × interval).
    tolerance_ns: u64,
}

impl Rate {
    /// `per_s` per second sustained, `burst` at once (both at least 1).
    pub fn new(per_s: u32, burst: u32) -> Rate {
        let interval_ns = 1_000_000_000 / u64::from(per_s.max(1));
        Rate {
            interval_ns,
            tolerance_ns: interval_ns * u64::from(burst.max(1)),
        }
    }
}

/// Buckets per key, sharded to keep lock holds short, bounded in size: buckets that
/// are full again (idle keys) are dropped when a shard grows past its bound.
pub struct RateLimiter {
    rate: Rate,
    shards: Vec<Mutex<HashMap<String, u64>>>,
    keys_per_shard_max: usize,
}

const SHARDS: usize = 16;

impl RateLimiter {
    /// A limiter holding at most about `keys_max` keys.
    pub fn new(rate: Rate, keys_max: usize) -> RateLimiter {
        RateLimiter {
            rate,
            shards: (0..SHARDS).map(|_| Mutex::new(HashMap::new())).collect(),
            keys_per_shard_max: (keys_max / SHARDS).max(1),
        }
    }

    /// Takes one request for `key` at `now_ns` (a monotonic clock): `Ok` if it
    /// conforms, else how long until it would.
    pub fn check(&self, key: &str, now_ns: u64) -> Result<(), Duration> {
        let mut h = std::collections::hash_map::DefaultHasher::new();
        key.hash(&mut h);
        let shard = &self.shards[(h.finish() as usize) % SHARDS];
        let mut map = shard.lock().expect("rate limiter lock");
        if map.len() >= self.keys_per_shard_max && !map.contains_key(key) {
            // Forget keys whose bucket is full again: they behave exactly as new ones.
            map.retain(|_, tat| *tat > now_ns);
            if map.len() >= self.keys_per_shard_max {
                // Every tracked key is busy: refuse new ones rather than grow.
                return Err(Duration::from_nanos(self.rate.interval_ns));
            }
        }
        let tat = map.get(key).copied().unwrap_or(now_ns).max(now_ns);
        let new_tat = tat + self.rate.interval_ns;
        if new_tat > now_ns + self.rate.tolerance_ns {
            return Err(Duration::from_nanos(
                new_tat - now_ns - self.rate.tolerance_ns,
            ));
        }
        map.insert(key.to_owned(), new_tat);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: u64 = 1_000_000_000;

    #[test]
    fn a_burst_passes_then_the_sustained_rate_holds() {
        let l = RateLimiter::new(Rate::new(10, 5), 100);
        for _ in 0..5 {
            assert!(l.check("k", 0).is_ok());
        }
        let wait = l.check("k", 0).unwrap_err();
        assert_eq!(wait, Duration::from_millis(100));
        // After one interval, exactly one more passes.
        assert!(l.check("k", S / 10).is_ok());
        assert!(l.check("k", S / 10).is_err());
        // Another key has its own bucket.
        assert!(l.check("other", 0).is_ok());
    }

    #[test]
    fn an_idle_key_gets_its_whole_burst_back() {
        let l = RateLimiter::new(Rate::new(10, 3), 100);
        for _ in 0..3 {
            l.check("k", 0).unwrap();
        }
        assert!(l.check("k", 0).is_err());
        for _ in 0..3 {
            l.check("k", 10 * S).unwrap();
        }
        assert!(l.check("k", 10 * S).is_err());
    }

    #[test]
    fn the_limiter_stays_bounded_and_drops_idle_keys_first() {
        let l = RateLimiter::new(Rate::new(1, 1), SHARDS * 2);
        let mut refused = 0;
        for i in 0..1000 {
            if l.check(&format!("k{i}"), 0).is_err() {
                refused += 1;
            }
        }
        let held: usize = l.shards.iter().map(|s| s.lock().unwrap().len()).sum();
        assert!(held <= SHARDS * 2, "held {held}");
        assert!(refused > 0);
        // Once the buckets are full again, new keys are admitted.
        assert!(l.check("fresh", 10 * S).is_ok());
    }

    #[test]
    fn defaults_validate_and_bad_values_name_their_key() {
        LimitSettings::default().validate().unwrap();
        let s = LimitSettings {
            requests_per_key_per_s: 0,
            ..Default::default()
        };
        assert!(s
            .validate()
            .unwrap_err()
            .key
            .contains("requests_per_key_per_s"));
        let s = LimitSettings {
            api_connections_per_address_max: 10,
            ..Default::default()
        };
        assert!(s
            .validate()
            .unwrap_err()
            .key
            .contains("api_connections_per_address_max"));
    }
}
