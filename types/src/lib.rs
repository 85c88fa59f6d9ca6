//! kura's API wire types: what requests carry and responses show, shared by the node
//! (which serves them and, with the `openapi` feature, describes them) and the SDK
//! (which sends and decodes them). Times are Unix seconds unless a field says `_ms`.
//! Requests refuse unknown fields; responses may grow new ones.

mod admin;
mod cluster;
mod payments;
mod problem;
mod tokens;

pub use admin::*;
pub use cluster::*;
pub use payments::*;
pub use problem::*;
pub use tokens::*;
