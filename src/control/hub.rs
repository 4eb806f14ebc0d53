//! Fan-out of state changes to connected map sessions.

/// What changed; map sessions turn this into deltas for their node.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Change {
    /// A node was added or changed in a way peers must see in full.
    NodeUpsert(u64),
    /// A node was deleted (or is no longer visible).
    NodeRemoved(u64),
    /// Only patchable fields changed (endpoints, DERP, disco key, online).
    NodePatch(u64),
    /// A user's profile changed.
    UserChanged(u64),
    /// Policy, DNS or DERP configuration changed: resend everything.
    Everything,
}

#[derive(Default)]
pub struct Hub {}

impl Hub {
    pub fn notify(&self, _c: Change) {}
}
