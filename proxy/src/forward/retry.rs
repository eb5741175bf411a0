//! The retry policy (docs/architecture.md, "How it forwards"): which endpoint, and which
//! kind of connection, a request's next try takes after each way a try can
//! fail. Its moves are named for those failures, and each says what to do
//! next. Never another pool: only the endpoints of the request's pool are
//! counted here.
//!
//! - Connecting failed (nothing was sent): the next endpoint.
//! - The request came back unsent: on a new connection to the same
//!   endpoint if the one it was written to was reused (an idle connection
//!   the upstream had closed), else the next endpoint.
//! - Sent, and the connection closed before any response byte: only a
//!   request that [`may_repeat`], and only once: on a new connection to the
//!   same endpoint if the closed one was reused or this is the last
//!   endpoint, else (an endpoint that accepted and then went away) the next
//!   endpoint.
//!
//! Each endpoint's try starts with an idle connection when there is one.

use http::Method;

/// One try of a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Try {
    /// Which endpoint: its index in the pool.
    pub endpoint: usize,
    /// A new connection is needed (an idle one would not do).
    pub fresh: bool,
    /// Not the first try (counted in `switchyard_retries_total`).
    pub retry: bool,
}

/// What to do next.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Next {
    /// Try again.
    Try(Try),
    /// Stop and answer with the last error.
    GiveUp,
}

/// Where the tries of one request stand.
#[derive(Debug)]
pub struct Retry {
    /// The request's first endpoint (the one spreading chose): its index.
    start: usize,
    /// The endpoint of the current try, counted from `start`.
    endpoint: usize,
    /// Endpoints in the pool.
    endpoints: usize,
    /// The current try needs a new connection.
    fresh: bool,
    /// The request was already sent again once.
    repeated: bool,
}

impl Retry {
    /// The tries of a request to a pool of `endpoints` endpoints, starting
    /// with the endpoint at index `start` (modulo `endpoints`).
    pub fn new(start: usize, endpoints: usize) -> Retry {
        Retry {
            start,
            endpoint: 0,
            endpoints,
            fresh: false,
            repeated: false,
        }
    }

    /// The first try: the first endpoint, an idle connection if there is
    /// one. Gives up at once on a pool without endpoints.
    pub fn first(&self) -> Next {
        self.current(false)
    }

    /// Connecting (or its handshake) failed: nothing was sent.
    pub fn after_connect_failure(&mut self) -> Next {
        self.move_on(false)
    }

    /// The request came back unsent from a connection that was `reused`
    /// (idle) or new.
    pub fn after_not_sent(&mut self, reused: bool) -> Next {
        self.move_on(reused)
    }

    /// The request was sent on a `reused` (idle) or new connection, and that
    /// connection closed before any response byte. `repeatable`: the
    /// request [`may_repeat`].
    pub fn after_closed_before_response(&mut self, reused: bool, repeatable: bool) -> Next {
        if !repeatable || self.repeated {
            return Next::GiveUp;
        }
        self.repeated = true;
        let last = self.endpoint + 1 >= self.endpoints;
        self.move_on(reused || last)
    }

    /// The next try goes to a new connection to the same endpoint, or to
    /// the next endpoint (an idle connection first).
    fn move_on(&mut self, same_endpoint: bool) -> Next {
        if !same_endpoint {
            self.endpoint += 1;
        }
        self.fresh = same_endpoint;
        self.current(true)
    }

    /// The index in the pool of the current try's endpoint.
    pub fn endpoint(&self) -> usize {
        (self.start + self.endpoint) % self.endpoints.max(1)
    }

    fn current(&self, retry: bool) -> Next {
        if self.endpoint < self.endpoints {
            Next::Try(Try {
                endpoint: self.endpoint(),
                fresh: self.fresh,
                retry,
            })
        } else {
            Next::GiveUp
        }
    }
}

/// Whether a request may be sent a second time after its connection closed
/// before any response byte: an idempotent method (GET, HEAD, OPTIONS, PUT,
/// DELETE), no body, and not an upgrade.
pub fn may_repeat(method: &Method, body_empty: bool, upgrade: bool) -> bool {
    is_idempotent(method) && body_empty && !upgrade
}

fn is_idempotent(m: &Method) -> bool {
    matches!(
        *m,
        Method::GET | Method::HEAD | Method::OPTIONS | Method::PUT | Method::DELETE
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn go(endpoint: usize, fresh: bool) -> Next {
        Next::Try(Try {
            endpoint,
            fresh,
            retry: true,
        })
    }

    #[test]
    fn first_try_is_the_first_endpoint_on_an_idle_connection() {
        let first = Next::Try(Try {
            endpoint: 0,
            fresh: false,
            retry: false,
        });
        assert_eq!(Retry::new(0, 3).first(), first);
        assert_eq!(Retry::new(0, 0).first(), Next::GiveUp);
    }

    #[test]
    fn connect_failures_walk_the_endpoints_then_give_up() {
        let mut r = Retry::new(0, 3);
        assert_eq!(r.after_connect_failure(), go(1, false));
        assert_eq!(r.after_connect_failure(), go(2, false));
        assert_eq!(r.after_connect_failure(), Next::GiveUp);
    }

    #[test]
    fn endpoints_are_tried_from_the_round_robin_start_around() {
        let mut r = Retry::new(5, 3);
        assert_eq!(
            r.first(),
            Next::Try(Try {
                endpoint: 2,
                fresh: false,
                retry: false
            })
        );
        assert_eq!(r.after_connect_failure(), go(0, false));
        assert_eq!(r.after_connect_failure(), go(1, false));
        assert_eq!(r.after_connect_failure(), Next::GiveUp, "each endpoint once");
    }

    #[test]
    fn not_sent_on_a_reused_connection_tries_a_new_one_to_the_same_endpoint() {
        let mut r = Retry::new(0, 2);
        assert_eq!(r.after_not_sent(true), go(0, true));
        // A new connection's request that came back: the next endpoint.
        assert_eq!(r.after_not_sent(false), go(1, false));
        assert_eq!(r.after_not_sent(false), Next::GiveUp);
    }

    #[test]
    fn closed_before_response_repeats_once() {
        // (endpoints, reused, repeatable) → what happens next.
        let table = [
            // Reused connection: a new one to the same endpoint.
            (3, true, true, go(0, true)),
            // New connection (the endpoint went away): the next endpoint.
            (3, false, true, go(1, false)),
            // New connection to the last endpoint: a new one to it again.
            (1, false, true, go(0, true)),
            // Not repeatable (a body, POST…): give up.
            (3, true, false, Next::GiveUp),
            (3, false, false, Next::GiveUp),
        ];
        for (endpoints, reused, repeatable, want) in table {
            let mut r = Retry::new(0, endpoints);
            assert_eq!(
                r.after_closed_before_response(reused, repeatable),
                want,
                "endpoints={endpoints} reused={reused} repeatable={repeatable}"
            );
        }
        let mut r = Retry::new(0, 3);
        assert_eq!(r.after_closed_before_response(true, true), go(0, true));
        assert_eq!(
            r.after_closed_before_response(false, true),
            Next::GiveUp,
            "only once"
        );
    }

    #[test]
    fn a_repeat_still_walks_on_after_connect_failures() {
        let mut r = Retry::new(0, 2);
        assert_eq!(r.after_closed_before_response(false, true), go(1, false));
        assert_eq!(r.after_connect_failure(), Next::GiveUp);
    }

    #[test]
    fn may_repeat_idempotent_bodyless_non_upgrades() {
        for (method, want) in [
            (Method::GET, true),
            (Method::HEAD, true),
            (Method::OPTIONS, true),
            (Method::PUT, true),
            (Method::DELETE, true),
            (Method::POST, false),
            (Method::PATCH, false),
            (Method::CONNECT, false),
            (Method::TRACE, false),
        ] {
            assert_eq!(may_repeat(&method, true, false), want, "{method}");
            assert!(!may_repeat(&method, false, false), "{method} with a body");
            assert!(!may_repeat(&method, true, true), "{method} upgrade");
        }
    }
}
