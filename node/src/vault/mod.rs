//! The vault domain: cards, tokens, commands and the replicated state.
//!
//! Pure by construction: nothing here reads a clock, draws randomness, does IO or
//! knows about tokio, redb, hyper or openraft. The leader decides every
//! nondeterministic value and puts it in the [`Command`].

pub mod audit;
pub mod card;
pub mod command;
pub mod hex_bytes;
pub mod leader_change;
pub mod payment;
pub mod state;
pub mod tables;
pub mod token;
pub mod violation;

pub use card::{Brand, CardError, Cvc, Expiry, Pan};
pub use command::{
    Command, Idempotency, IdempotencyRecord, KeyRole, MerchantInfo, MerchantSettings,
    PaymentChange, Refusal, Reseal, Response, SealedCard, StoredOutcome, TokenMeta, COMMAND_LEVEL,
};
pub use leader_change::{LeaderChange, LeaderChangeCause};
pub use state::{Vault, VaultState};
pub use tables::{MemTables, StorageError, TableId, Tables, TablesMut};
pub use token::{TokenFormat, TokenKind};
pub use violation::Violation;
