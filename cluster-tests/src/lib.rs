//! Shared helpers for kura's cluster tests: real `kura` processes on loopback, and
//! (feature `sim`) turmoil simulations of the real node code.

#[cfg(feature = "sim")]
pub mod chaos;
pub mod load;
pub mod oracle;
pub mod procs;
pub mod schema;
