//! Forming the cluster once: `init`, guarded by a cluster id stored durably on every
//! member, and a peer joining the id it is given.

use super::*;

impl Cluster {
    pub(super) async fn adopt_cluster_id(&self, id: &str) -> Result<(), FormError> {
        if self.store.has_raft_state().map_err(storage)? {
            return Err(FormError::DataWithoutId("join"));
        }
        self.store.set_cluster_id(id).await.map_err(storage)?;
        *self.cluster_id.write().expect("cluster id lock") = Some(id.to_owned());
        tracing::info!(cluster_id = id, "joined cluster");
        Ok(())
    }

    /// Forms the cluster from the configured members, once.
    ///
    /// Idempotent: a node that already has a cluster id answers with it. Refuses if any
    /// peer already belongs to a cluster or holds Raft data, so that two clusters are
    /// never silently merged or formed twice.
    pub async fn init(&self, id_if_new: String) -> Result<InitOutcome, FormError> {
        let initialized = self
            .raft
            .is_initialized()
            .await
            .map_err(|e| FormError::Raft(e.to_string()))?;
        let existing = self.cluster_id();
        match (&existing, initialized) {
            (Some(id), true) => {
                return Ok(InitOutcome {
                    cluster_id: id.clone(),
                    already_initialized: true,
                });
            }
            // An earlier init recorded the id but did not finish: finish it with that id.
            (Some(_), false) => {}
            (None, _) if self.store.has_raft_state().map_err(storage)? => {
                return Err(FormError::DataWithoutId("form a cluster"));
            }
            (None, _) => {}
        }
        let id = existing.unwrap_or(id_if_new);
        self.check_peers_can_join(&id).await?;
        self.store.set_cluster_id(&id).await.map_err(storage)?;
        *self.cluster_id.write().expect("cluster id lock") = Some(id.clone());
        self.raft
            .initialize(self.configured.clone())
            .await
            .map_err(|e| FormError::Raft(e.to_string()))?;
        tracing::info!(cluster_id = %id, members = self.configured.len(), "cluster formed");
        Ok(InitOutcome {
            cluster_id: id,
            already_initialized: false,
        })
    }

    /// Every peer must answer, be the node the config says, and belong to no cluster
    /// other than `id` (a peer may already carry `id` from an unfinished init).
    pub(super) async fn check_peers_can_join(&self, id: &str) -> Result<(), FormError> {
        for (peer_id, m) in self.configured.iter().filter(|(i, _)| **i != self.id) {
            let ident = self.peer_identity(m).await?;
            if ident.node_id != *peer_id {
                return Err(FormError::WrongPeer {
                    addr: m.raft_addr.clone(),
                    says: ident.node_id,
                    expected: *peer_id,
                });
            }
            match ident.cluster_id {
                Some(theirs) if theirs != id => {
                    return Err(FormError::PeerInOtherCluster {
                        name: m.name.clone(),
                        theirs,
                    });
                }
                None if ident.has_data => return Err(FormError::PeerDataWithoutId(m.name.clone())),
                _ => {}
            }
        }
        Ok(())
    }

    /// What a peer says of itself (the error says why it could not be asked).
    pub(super) async fn peer_identity(&self, m: &Member) -> Result<server::Identity, FormError> {
        let unreachable = |detail: String| FormError::PeerUnreachable {
            name: m.name.clone(),
            addr: m.raft_addr.clone(),
            detail,
        };
        let req = http::Request::get("/raft/identity")
            .header(http::header::HOST, &m.raft_addr)
            .header(NODE_ID_HEADER, self.id)
            .body(http_body_util::Full::new(bytes::Bytes::new()))
            .expect("valid request");
        let resp = self
            .pool
            .send(&m.raft_addr, req, Duration::from_secs(3))
            .await
            .map_err(|e| unreachable(e.to_string()))?;
        serde_json::from_slice(resp.body()).map_err(|e| unreachable(e.to_string()))
    }
}

fn storage(e: impl std::fmt::Display) -> FormError {
    FormError::Storage(e.to_string())
}
