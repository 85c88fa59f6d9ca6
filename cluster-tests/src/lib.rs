//! Shared helpers for kura's cluster tests: real `kura` processes on loopback, and
//! (feature `sim`) turmoil simulations of the real node code.

pub mod oracle;
pub mod procs;
