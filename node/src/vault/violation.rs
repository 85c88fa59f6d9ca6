//! A broken invariant of the vault, as `validate()` names it.

/// An invariant of the vault that does not hold: which record, and what is wrong with
/// it. Never card data or keys.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{detail}")]
pub struct Violation {
    pub detail: String,
}

impl Violation {
    pub fn new(detail: impl Into<String>) -> Violation {
        Violation {
            detail: detail.into(),
        }
    }
}
