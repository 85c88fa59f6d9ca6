//! Best-effort calls to the other members' peer listeners, outside Raft (CVC copies,
//! audit events, health polls), each bounded by a timeout.

use super::*;

impl Cluster {
    /// POSTs `msg` (as JSON) to `path` on every other member's peer listener in
    /// parallel, each bounded by `timeout`. Returns how many answered with success. Best
    /// effort: a failure is logged at debug level and counted out, never retried.
    pub async fn post_to_peers<M: Serialize>(
        &self,
        path: &str,
        msg: &M,
        timeout: Duration,
    ) -> usize {
        let body = bytes::Bytes::from(serde_json::to_vec(msg).expect("a peer message serializes"));
        let cluster = self.cluster_id().unwrap_or_default();
        let members = self.members();
        let sends = members
            .iter()
            .filter(|(id, _)| **id != self.id)
            .map(|(_, m)| {
                let req =
                    peer_request(self.id, http::Method::POST, path, &m.raft_addr, &cluster, body.clone());
                let addr = m.raft_addr.clone();
                async move {
                    match self.pool.send(&addr, req, timeout).await {
                        Ok(r) if r.status().is_success() => true,
                        other => {
                            tracing::debug!(peer = %addr, path, outcome = ?other.map(|r| r.status()), "peer post failed");
                            false
                        }
                    }
                }
            });
        futures::future::join_all(sends)
            .await
            .into_iter()
            .filter(|ok| *ok)
            .count()
    }

    /// POSTs `msg` (as JSON) to `path` on member `to`'s peer listener, bounded by
    /// `timeout`; true when it answered with success.
    pub async fn post_to_peer<M: Serialize>(
        &self,
        to: NodeId,
        path: &str,
        msg: &M,
        timeout: Duration,
    ) -> bool {
        let body = bytes::Bytes::from(serde_json::to_vec(msg).expect("a peer message serializes"));
        let members = self.members();
        let Some(m) = members.get(&to) else {
            return false;
        };
        let cluster = self.cluster_id().unwrap_or_default();
        let req = peer_request(
            self.id,
            http::Method::POST,
            path,
            &m.raft_addr,
            &cluster,
            body,
        );
        match self.pool.send(&m.raft_addr, req, timeout).await {
            Ok(r) if r.status().is_success() => true,
            other => {
                tracing::debug!(peer = %m.raft_addr, path, outcome = ?other.map(|r| r.status()), "peer post failed");
                false
            }
        }
    }

    /// GETs `path` from every other member's peer listener in parallel, each bounded by
    /// `timeout`: the body of each success, `None` for each failure, and when each
    /// answer came.
    pub async fn get_from_peers(
        &self,
        path: &str,
        timeout: Duration,
    ) -> Vec<(NodeId, Option<bytes::Bytes>, tokio::time::Instant)> {
        let cluster = self.cluster_id().unwrap_or_default();
        let members = self.members();
        let gets = members
            .iter()
            .filter(|(id, _)| **id != self.id)
            .map(|(id, m)| {
                let req = peer_request(
                    self.id,
                    http::Method::GET,
                    path,
                    &m.raft_addr,
                    &cluster,
                    bytes::Bytes::new(),
                );
                let addr = m.raft_addr.clone();
                async move {
                    let body = match self.pool.send(&addr, req, timeout).await {
                        Ok(r) if r.status().is_success() => Some(r.into_body()),
                        Ok(_) => None,
                        Err(_) => {
                            self.pool.forget(&addr);
                            None
                        }
                    };
                    (*id, body, tokio::time::Instant::now())
                }
            });
        futures::future::join_all(gets).await
    }
}
