//! turmoil's simulated TCP behind the [`Net`](super::Net) traits.

use super::{Binder, BoxFut, BoxIo, Connector, Listener};
use std::io;

pub(super) struct TurmoilConnector;
pub(super) struct TurmoilBinder;
struct TurmoilListener(turmoil::net::TcpListener);

impl Connector for TurmoilConnector {
    fn connect<'a>(&'a self, addr: &'a str) -> BoxFut<'a, io::Result<BoxIo>> {
        Box::pin(
            async move { Ok(Box::new(turmoil::net::TcpStream::connect(addr).await?) as BoxIo) },
        )
    }
}

impl Binder for TurmoilBinder {
    fn bind<'a>(&'a self, addr: &'a str) -> BoxFut<'a, io::Result<Box<dyn Listener>>> {
        Box::pin(async move {
            // Simulated hosts listen on all of their addresses; only the port matters.
            let port = addr
                .rsplit(':')
                .next()
                .and_then(|p| p.parse::<u16>().ok())
                .ok_or_else(|| {
                    io::Error::new(
                        io::ErrorKind::InvalidInput,
                        format!("listen address {addr} has no port"),
                    )
                })?;
            let l = turmoil::net::TcpListener::bind(("0.0.0.0", port)).await?;
            Ok(Box::new(TurmoilListener(l)) as Box<dyn Listener>)
        })
    }
}

impl Listener for TurmoilListener {
    fn accept(&mut self) -> BoxFut<'_, io::Result<(BoxIo, String)>> {
        Box::pin(async move {
            let (s, peer) = self.0.accept().await?;
            Ok((Box::new(s) as BoxIo, peer.to_string()))
        })
    }

    fn local_addr(&self) -> io::Result<String> {
        Ok(self.0.local_addr()?.to_string())
    }
}
