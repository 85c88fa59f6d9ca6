//! Forming the cluster once: `init`, guarded by a cluster id stored durably on every
//! member, and a peer joining the id it is given.

use super::*;

impl Cluster {
    pub(super) async fn adopt_cluster_id(&self, id: &str) -> Result<(), String> {
        if self.store.has_raft_state().map_err(|e| e.to_string())? {
            return Err("this node has Raft data but no cluster id; refusing to join".into());
        }
        self.store
            .set_cluster_id(id)
            .await
            .map_err(|e| e.to_string())?;
        *self.cluster_id.write().expect("cluster id lock") = Some(id.to_owned());
        tracing::info!(cluster_id = id, "joined cluster");
        Ok(())
    }

    /// Forms the cluster from the configured members, once.
    ///
    /// Idempotent: a node that already has a cluster id answers with it. Refuses if any
    /// peer already belongs to a cluster or holds Raft data, so that two clusters are
    /// never silently merged or formed twice.
    pub async fn init(&self, id_if_new: String) -> Result<InitOutcome, String> {
        let initialized = self
            .raft
            .is_initialized()
            .await
            .map_err(|e| e.to_string())?;
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
            (None, _) if self.store.has_raft_state().map_err(|e| e.to_string())? => {
                return Err(
                    "this node has Raft data but no cluster id; refusing to form a cluster".into(),
                );
            }
            (None, _) => {}
        }
        let id = existing.unwrap_or(id_if_new);
        self.check_peers_can_join(&id).await?;
        self.store
            .set_cluster_id(&id)
            .await
            .map_err(|e| e.to_string())?;
        *self.cluster_id.write().expect("cluster id lock") = Some(id.clone());
        self.raft
            .initialize(self.members.clone())
            .await
            .map_err(|e| format!("raft initialize failed: {e}"))?;
        tracing::info!(cluster_id = %id, members = self.members.len(), "cluster formed");
        Ok(InitOutcome {
            cluster_id: id,
            already_initialized: false,
        })
    }

    /// Every peer must answer, be the node the config says, and belong to no cluster
    /// other than `id` (a peer may already carry `id` from an unfinished init).
    pub(super) async fn check_peers_can_join(&self, id: &str) -> Result<(), String> {
        for (peer_id, m) in self.members.iter().filter(|(i, _)| **i != self.id) {
            let ident = self
                .peer_identity(m)
                .await
                .map_err(|e| format!("peer {} ({}) unreachable: {e}", m.name, m.raft_addr))?;
            if ident.node_id != *peer_id {
                return Err(format!(
                    "peer at {} says it is node {}, config says {peer_id}",
                    m.raft_addr, ident.node_id
                ));
            }
            match ident.cluster_id {
                Some(theirs) if theirs != id => {
                    return Err(format!(
                        "peer {} already belongs to cluster {theirs}",
                        m.name
                    ));
                }
                None if ident.has_data => {
                    return Err(format!("peer {} has Raft data but no cluster id", m.name))
                }
                _ => {}
            }
        }
        Ok(())
    }

    pub(super) async fn peer_identity(&self, m: &Member) -> Result<server::Identity, String> {
        let req = http::Request::get("/raft/identity")
            .header(http::header::HOST, &m.raft_addr)
            .header(NODE_ID_HEADER, self.id)
            .body(http_body_util::Full::new(bytes::Bytes::new()))
            .expect("valid request");
        let resp = self
            .pool
            .send(&m.raft_addr, req, Duration::from_secs(3))
            .await
            .map_err(|e| e.to_string())?;
        serde_json::from_slice(resp.body()).map_err(|e| e.to_string())
    }
}
