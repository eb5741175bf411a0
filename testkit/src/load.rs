//! Keep-alive load for tests, driven by `loadgen` (the load generator
//! `bench` uses): every request recorded per connection on one clock, a
//! live count to wait on, and the cut-over checks of `loadgen::report`.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use loadgen::clock::Clock;
use loadgen::sample::Sample;
use loadgen::target::Target;
use loadgen::{LoadConfig, LoadGen, Recorder};

use crate::wait::wait_until_async;

/// `conns` keep-alive connections, each sending `GET path` in a loop (closed
/// loop, on loadgen's own thread) until stopped.
pub struct Load {
    gen: LoadGen<Recorder>,
    /// Requests finished, per connection.
    counts: Vec<Arc<AtomicU64>>,
    clock: Clock,
}

impl Load {
    /// Starts the load and returns once every connection has been answered
    /// at least once (so each is open, and stays open unless a request fails).
    pub async fn start(addr: SocketAddr, conns: usize, path: &str) -> Load {
        let target = Target::parse(&format!("http://{addr}{path}")).unwrap();
        Self::start_with(LoadConfig::new(target, conns)).await
    }

    /// As [`Load::start`], over HTTPS: each connection makes a TLS handshake
    /// with `tls`, asking for `server_name`, then speaks HTTP/1.1.
    pub async fn start_tls(
        addr: SocketAddr,
        server_name: &str,
        conns: usize,
        path: &str,
        tls: Arc<rustls::ClientConfig>,
    ) -> Load {
        let mut target = Target::parse(&format!("http://{addr}{path}")).unwrap();
        target.authority = format!("{server_name}:{}", addr.port());
        let mut config = LoadConfig::new(target, conns);
        config.tls = Some(tls);
        Self::start_with(config).await
    }

    /// Starts the load `config` describes (see [`Load::start`]).
    pub async fn start_with(config: LoadConfig) -> Load {
        let conns = config.concurrency;
        let clock = Clock::start();
        let counts: Vec<Arc<AtomicU64>> = (0..conns).map(|_| Arc::new(AtomicU64::new(0))).collect();
        let gen = LoadGen::start(config, clock, |i| Recorder::new(counts[i].clone())).unwrap();
        let load = Load { gen, counts, clock };
        wait_until_async(Duration::from_secs(20), "every load connection answered", || {
            load.counts.iter().all(|c| c.load(Ordering::Relaxed) > 0)
        })
        .await;
        load
    }

    /// The clock every sample's times are on.
    pub fn clock(&self) -> Clock {
        self.clock
    }

    /// Nanoseconds on [`Load::clock`] now (e.g. the moment a switch was acknowledged).
    pub fn now_ns(&self) -> u64 {
        self.clock.now_ns()
    }

    /// Requests finished so far, over all connections.
    pub fn count(&self) -> u64 {
        self.counts.iter().map(|c| c.load(Ordering::Relaxed)).sum()
    }

    /// Waits (at most 20 s) until `n` more requests have finished.
    pub async fn wait_more(&self, n: u64) {
        let target = self.count() + n;
        wait_until_async(Duration::from_secs(20), &format!("{n} more requests"), || {
            self.count() >= target
        })
        .await;
    }

    /// Stops the load (in-flight requests finish) and returns every sample,
    /// per connection in order.
    pub fn stop(self) -> Vec<Vec<Sample>> {
        self.gen.stop().into_iter().map(|r| r.samples).collect()
    }
}

/// Asserts that no request failed, showing the first failures.
pub fn assert_no_failures(samples: &[Sample]) {
    let failed: Vec<String> = samples.iter().filter_map(Sample::failure).collect();
    assert!(
        failed.is_empty(),
        "{} of {} requests failed; first: {:?}",
        failed.len(),
        samples.len(),
        &failed[..failed.len().min(5)]
    );
}
