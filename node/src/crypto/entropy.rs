//! Where random bytes come from: the OS in production, a seeded generator in simulation.

use rand::rngs::{OsRng, StdRng};
use rand::{RngCore, SeedableRng};
use std::sync::Mutex;

/// A source of random bytes for ids, nonces and keys.
///
/// Production uses the operating system's CSPRNG. Simulations use a generator seeded
/// from the run seed, so that the same seed replays the same ids.
#[derive(Debug)]
pub enum Entropy {
    /// The operating system's CSPRNG.
    Os,
    /// A deterministic generator (simulation and tests only).
    Seeded(Box<Mutex<StdRng>>),
}

impl Entropy {
    /// A deterministic source for simulations and tests.
    pub fn seeded(seed: u64) -> Entropy {
        Entropy::Seeded(Box::new(Mutex::new(StdRng::seed_from_u64(seed))))
    }

    /// Fills `buf` with random bytes.
    pub fn fill(&self, buf: &mut [u8]) {
        match self {
            Entropy::Os => OsRng.fill_bytes(buf),
            Entropy::Seeded(rng) => rng.lock().expect("entropy lock").fill_bytes(buf),
        }
    }

    /// `N` random bytes.
    pub fn bytes<const N: usize>(&self) -> [u8; N] {
        let mut b = [0u8; N];
        self.fill(&mut b);
        b
    }

    /// A fresh AES-GCM nonce.
    pub fn nonce(&self) -> [u8; super::NONCE_BYTES] {
        self.bytes()
    }

    /// A random u64 (for seeds and ids).
    pub fn u64(&self) -> u64 {
        u64::from_le_bytes(self.bytes())
    }
}
