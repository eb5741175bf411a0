//! One core's share of the data plane: what every request on a core uses
//! and no other core touches (its upstream connections, its view of the
//! routing table, its deadlines, its request ids).

use std::rc::Rc;
use std::sync::Arc;

use http::HeaderValue;

use crate::client::LocalClient;
use crate::deadline::Deadlines;
use crate::headers::RequestIds;
use crate::local::View;
use crate::shared::Shared;

/// One core's share of the data plane; made once per core at its start.
pub struct Worker {
    /// State shared by every core.
    pub shared: Arc<Shared>,
    /// This core's upstream connections (new and idle ones).
    pub client: Rc<LocalClient>,
    /// This core's view of the routing table.
    pub view: View,
    /// This core's request and client-idle deadlines.
    pub deadlines: Rc<Deadlines>,
    /// This core's request ids (a prefix random per process and core).
    ids: RequestIds,
}

impl Worker {
    /// A core's worker.
    pub fn new(shared: Arc<Shared>, client: Rc<LocalClient>, core: usize) -> Worker {
        use std::hash::{BuildHasher, Hasher};
        let mut h = std::collections::hash_map::RandomState::new().build_hasher();
        h.write_usize(core);
        h.write_u128(
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap_or_default()
                .as_nanos(),
        );
        let view = View::new(core, Rc::clone(&client), shared.failures.clone());
        Worker {
            shared,
            client,
            view,
            deadlines: Rc::new(Deadlines::default()),
            ids: RequestIds::new(h.finish()),
        }
    }

    /// A new request id: this core's random prefix and its counter, in hex.
    pub fn new_request_id(&self) -> HeaderValue {
        self.ids.next_id()
    }
}
