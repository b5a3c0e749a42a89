//! All sessions with one remote device: one active, up to [`MAX_ARCHIVED_SESSIONS`] archived.
//!
//! Messages name their session, so the right one is found by identifier, never by trial
//! decryption. The record decides which session is active (Sesame): a session that receives a
//! message becomes active, and simultaneous initiation is settled by a deterministic tie-break so
//! both sides converge on the same session.

use std::collections::VecDeque;

use serde::{Deserialize, Serialize};

use crate::consts::MAX_ARCHIVED_SESSIONS;
use crate::keys::PublicIdentity;
use crate::session::message::SessionId;
use crate::session::ratchet::Session;

/// The sessions with one remote device, all under one remote identity. The front session is the
/// active one.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct SessionRecord {
    /// The identity of the remote device in every session of the record: a session under another
    /// identity starts a new record.
    pub(crate) remote_identity: PublicIdentity,
    sessions: VecDeque<Session>,
}

impl SessionRecord {
    pub(crate) fn new(remote_identity: PublicIdentity, session: Session) -> Self {
        let mut sessions = VecDeque::with_capacity(1);
        sessions.push_back(session);
        Self { remote_identity, sessions }
    }

    pub(crate) fn active(&self) -> Option<&Session> {
        self.sessions.front()
    }

    pub(crate) fn active_mut(&mut self) -> Option<&mut Session> {
        self.sessions.front_mut()
    }

    pub(crate) fn find(&self, id: &SessionId) -> Option<usize> {
        self.sessions.iter().position(|s| &s.id == id)
    }

    pub(crate) fn get(&self, index: usize) -> Option<&Session> {
        self.sessions.get(index)
    }

    pub(crate) fn get_mut(&mut self, index: usize) -> Option<&mut Session> {
        self.sessions.get_mut(index)
    }

    /// True if the record and each session respect the crate's bounds.
    pub(crate) fn within_limits(&self) -> bool {
        !self.sessions.is_empty()
            && self.archived_len() <= MAX_ARCHIVED_SESSIONS
            && self.sessions.iter().all(Session::within_limits)
    }

    pub(crate) fn archived_len(&self) -> usize {
        self.sessions.len().saturating_sub(1)
    }

    /// Makes the session at `index` active after it received a message, unless it lost a
    /// simultaneous-initiation tie-break.
    pub(crate) fn promote(&mut self, index: usize) {
        let superseded = self.sessions.get(index).is_some_and(|s| s.superseded);
        if index != 0
            && !superseded
            && let Some(session) = self.sessions.remove(index)
        {
            self.sessions.push_front(session);
        }
    }

    /// Forgets every session if `identity` is not the record's: sessions under two identities
    /// never share a record.
    fn rebind(&mut self, identity: PublicIdentity) {
        if self.remote_identity != identity {
            self.sessions.clear();
            self.remote_identity = identity;
        }
    }

    /// Adds a session we initiated; it becomes active.
    pub(crate) fn insert_initiated(&mut self, identity: PublicIdentity, session: Session) {
        self.rebind(identity);
        self.sessions.push_front(session);
        self.sessions.truncate(MAX_ARCHIVED_SESSIONS + 1);
    }

    /// Adds a session the remote device initiated.
    ///
    /// If our active session is one we initiated that has not been answered yet, both sides
    /// initiated at once: the session with the smaller identifier wins on both sides, and the
    /// loser is archived and marked superseded. Otherwise the new session becomes active.
    pub(crate) fn insert_received(&mut self, identity: PublicIdentity, mut session: Session) {
        self.rebind(identity);
        match self.sessions.front_mut() {
            Some(active) if !active.is_confirmed() && active.id < session.id => {
                session.superseded = true;
                self.sessions.insert(1, session);
            }
            Some(active) => {
                if !active.is_confirmed() {
                    active.superseded = true;
                }
                self.sessions.push_front(session);
            }
            None => self.sessions.push_front(session),
        }
        self.sessions.truncate(MAX_ARCHIVED_SESSIONS + 1);
    }
}
