//! Listeners and connectors as one abstraction over tokio TCP and simulated TCP.
//!
//! Node code never names a socket type: it gets a [`Net`] and asks it to bind or
//! connect. Production uses [`Net::tokio`]; simulations use `Net::turmoil` (feature
//! `sim`). This module knows nothing of the vault, Raft or the API.

#[cfg(feature = "sim")]
mod sim;

pub use kura_sdk::wire::{BoxFut, BoxIo, Connector, HttpPool, Spawner, TcpConnector, WireError};

use std::io;
use std::sync::Arc;

/// Accepts byte streams.
pub trait Listener: Send + 'static {
    /// Waits for the next connection; returns the stream and the peer's address.
    fn accept(&mut self) -> BoxFut<'_, io::Result<(BoxIo, String)>>;
    /// The address actually bound (useful with port 0).
    fn local_addr(&self) -> io::Result<String>;
}

/// Binds listeners.
pub trait Binder: Send + Sync + 'static {
    /// Binds `addr` (`host:port`).
    fn bind<'a>(&'a self, addr: &'a str) -> BoxFut<'a, io::Result<Box<dyn Listener>>>;
}

/// A network: how to connect and how to listen.
#[derive(Clone)]
pub struct Net {
    /// Opens outbound streams.
    pub connector: Arc<dyn Connector>,
    /// Opens listeners.
    pub binder: Arc<dyn Binder>,
}

impl Net {
    /// The real network through tokio.
    pub fn tokio() -> Net {
        Net {
            connector: Arc::new(TcpConnector),
            binder: Arc::new(TokioBinder),
        }
    }

    /// The simulated network of the current turmoil host.
    #[cfg(feature = "sim")]
    pub fn turmoil() -> Net {
        Net {
            connector: Arc::new(sim::TurmoilConnector),
            binder: Arc::new(sim::TurmoilBinder),
        }
    }
}

struct TokioBinder;

struct TokioListener(tokio::net::TcpListener);

impl Binder for TokioBinder {
    fn bind<'a>(&'a self, addr: &'a str) -> BoxFut<'a, io::Result<Box<dyn Listener>>> {
        Box::pin(async move {
            Ok(
                Box::new(TokioListener(tokio::net::TcpListener::bind(addr).await?))
                    as Box<dyn Listener>,
            )
        })
    }
}

impl Listener for TokioListener {
    fn accept(&mut self) -> BoxFut<'_, io::Result<(BoxIo, String)>> {
        Box::pin(async move {
            let (s, peer) = self.0.accept().await?;
            s.set_nodelay(true)?;
            Ok((Box::new(s) as BoxIo, peer.to_string()))
        })
    }

    fn local_addr(&self) -> io::Result<String> {
        Ok(self.0.local_addr()?.to_string())
    }
}

/// Serves `router` on `listener` until the listener fails: HTTP/1 with keep-alive,
/// one task per connection, spawned through the Raft runtime.
pub async fn serve(mut listener: Box<dyn Listener>, router: axum::Router) -> io::Result<()> {
    use hyper_util::rt::TokioIo;
    use hyper_util::service::TowerToHyperService;
    loop {
        let (io, _peer) = match listener.accept().await {
            Ok(c) => c,
            Err(e) if is_transient_accept_error(&e) => {
                tracing::warn!(error = %e, "accept failed; continuing");
                crate::raft_types::sleep(std::time::Duration::from_millis(10)).await;
                continue;
            }
            Err(e) => return Err(e),
        };
        let svc = TowerToHyperService::new(router.clone());
        crate::raft_types::spawn(async move {
            let conn = hyper::server::conn::http1::Builder::new()
                .keep_alive(true)
                .serve_connection(TokioIo::new(io), svc);
            if let Err(e) = conn.await {
                tracing::debug!(error = %e, "connection closed with error");
            }
        });
    }
}

fn is_transient_accept_error(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::ConnectionAborted
            | io::ErrorKind::ConnectionReset
            | io::ErrorKind::Interrupted
            | io::ErrorKind::WouldBlock
    ) || e.raw_os_error() == Some(24) // EMFILE: too many open files; back off and retry
}

/// A spawner that runs connection drivers through the Raft runtime.
pub fn spawner() -> Spawner {
    Arc::new(|f| {
        crate::raft_types::spawn(f);
    })
}
