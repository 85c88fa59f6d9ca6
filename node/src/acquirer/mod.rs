//! Reaching the card networks: the acquirer wire protocol, the simulator that speaks it
//! (`kura acquirer-sim`), and the router that sends authorisations over two redundant
//! routes and resolves in-doubt transactions before ever trying the other route.

pub mod protocol;
pub mod router;
pub mod sim;
