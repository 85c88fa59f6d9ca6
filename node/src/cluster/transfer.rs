//! Leader transfer, and the handoff notices that carry a leader change's cause to
//! whichever node records it.

use super::*;

impl Cluster {
    /// Holds a leader's handoff notice (`cause term`) until the next leader is seen.
    pub(crate) fn note_incoming_cause(&self, body: &str) -> Result<(), NoticeError> {
        let notice = HandoffNotice::parse(body, self.status().term, tokio::time::Instant::now())?;
        *self.incoming_cause.lock().expect("cause lock") = Some(notice);
        Ok(())
    }

    /// The cause this node records on becoming leader of `term`, if a handoff notice
    /// speaks for it (see `handoff::cause_for`).
    pub fn incoming_cause_for(&self, term: u64) -> Option<crate::vault::LeaderChangeCause> {
        let held = self.incoming_cause.lock().expect("cause lock");
        handoff::cause_for(&held, term, tokio::time::Instant::now())
    }

    /// Drops a notice that a recorded leader change of `recorded_term` has used or
    /// passed (see `handoff::settle`).
    pub fn settle_incoming_cause(&self, recorded_term: u64) {
        handoff::settle(
            &mut self.incoming_cause.lock().expect("cause lock"),
            recorded_term,
        );
    }

    /// Hands leadership to `to` for `cause` and waits until this node has applied the
    /// next leader's record of the change, up to `timeout`. Every peer is told the cause
    /// first (see `handoff`); `to` must have taken the notice. Only the leader
    /// can do this. Fails if another node took over instead (the transfer's election
    /// went to it), although leadership has then still moved.
    pub async fn transfer_leader(
        &self,
        to: NodeId,
        cause: crate::vault::LeaderChangeCause,
        timeout: Duration,
    ) -> Result<(), TransferError> {
        if !self.is_leader() {
            return Err(TransferError::NotLeader);
        }
        if !self.membership().voters.contains(&to) {
            return Err(TransferError::NotMember(to));
        }
        let from_term = self.status().term;
        let notice = bytes::Bytes::from(HandoffNotice::body(cause, from_term));
        let cluster_id = self.cluster_id().unwrap_or_default();
        let members = self.members();
        let sends = members
            .iter()
            .filter(|(id, _)| **id != self.id)
            .map(|(id, m)| {
                let req = peer_request(
                    self.id,
                    http::Method::POST,
                    "/raft/handoff-cause",
                    &m.raft_addr,
                    &cluster_id,
                    notice.clone(),
                );
                // Only the target's answer is waited for in full: a peer that is down
                // or cut off must not hold the handoff up.
                let bound = if *id == to {
                    timeout
                } else {
                    self.election_window.min(timeout)
                };
                async move { (*id, self.pool.send(&m.raft_addr, req, bound).await) }
            });
        for (id, answer) in futures::future::join_all(sends).await {
            match answer {
                Ok(r) if r.status().is_success() => {}
                other if id == to => {
                    return Err(TransferError::NoticeRefused {
                        to,
                        answer: format!("{:?}", other.map(|r| r.status())),
                    })
                }
                // Another peer that missed the notice would record a takeover of its
                // own as crash_or_partition; the transfer itself does not need it.
                other => {
                    tracing::debug!(peer = id, answer = ?other.map(|r| r.status()), "handoff notice not taken")
                }
            }
        }
        // This node holds the notice too: should the transfer's election come back to it,
        // that change is still the handoff's doing.
        self.note_incoming_cause(&String::from_utf8_lossy(&notice))?;
        let mut watch = self.watch();
        self.transfer_term
            .store(from_term, std::sync::atomic::Ordering::Release);
        self.raft
            .trigger()
            .transfer_leader(to)
            .await
            .map_err(|e| TransferError::Raft(e.to_string()))?;
        // Done once the next leader's record of the change (with the cause) has reached
        // this node: leadership moved again too soon would otherwise leave a term whose
        // change was never recorded.
        let recorded = || {
            self.vault().read(|v| {
                v.last_leader_change()
                    .filter(|c| c.term > from_term)
                    .map(|c| c.leader_node)
            })
        };
        let wait = async {
            loop {
                if let Ok(Some(leader)) = recorded() {
                    return Ok(leader);
                }
                if !watch.changed().await {
                    return Err(TransferError::Stopped);
                }
            }
        };
        match tokio::time::timeout(timeout, wait).await {
            Ok(Ok(leader)) if leader == to => Ok(()),
            Ok(Ok(leader)) => Err(TransferError::OtherLeader { leader, to }),
            Ok(Err(e)) => Err(e),
            Err(_) => Err(TransferError::Timeout { to, timeout }),
        }
    }
}
