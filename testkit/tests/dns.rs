//! The DNS server of testkit, asked by hickory-resolver pointed only at it:
//! answers over UDP and TCP on one port, and record changes at run time.
#![allow(clippy::unwrap_used)]

use std::net::IpAddr;

use hickory_resolver::config::{NameServerConfig, ResolveHosts, ResolverConfig};
use hickory_resolver::net::runtime::TokioRuntimeProvider;
use hickory_resolver::TokioResolver;
use testkit::dns::DnsServer;

const ZONE: &str = "default.svc.cluster.local.";
const BLUE: &str = "translation-api-blue.default.svc.cluster.local.";

/// A resolver that asks only `dns`, over `udp` or TCP, without a cache or the hosts file.
fn resolver(dns: &DnsServer, udp: bool) -> TokioResolver {
    let ip = dns.addr().ip();
    let mut ns = if udp {
        NameServerConfig::udp(ip)
    } else {
        NameServerConfig::tcp(ip)
    };
    for c in &mut ns.connections {
        c.port = dns.addr().port();
    }
    let mut builder = TokioResolver::builder_with_config(
        ResolverConfig::from_name_servers(vec![ns]),
        TokioRuntimeProvider::default(),
    );
    builder.options_mut().cache_size = 0;
    builder.options_mut().use_hosts_file = ResolveHosts::Never;
    builder.build().unwrap()
}

async fn lookup(r: &TokioResolver, name: &str) -> Vec<IpAddr> {
    let mut ips: Vec<IpAddr> = r.lookup_ip(name).await.unwrap().iter().collect();
    ips.sort();
    ips
}

fn ips(list: &[&str]) -> Vec<IpAddr> {
    list.iter().map(|s| s.parse().unwrap()).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn records_change_at_run_time_over_udp_and_tcp() {
    let dns = DnsServer::start(ZONE).await;
    let (udp, tcp) = (resolver(&dns, true), resolver(&dns, false));

    dns.set("translation-api-blue", &ips(&["127.0.0.1"]), 1).await;
    for r in [&udp, &tcp] {
        assert_eq!(lookup(r, BLUE).await, ips(&["127.0.0.1"]));
    }

    // The "pods" move: two new addresses, seen at once (no cache).
    dns.set(BLUE, &ips(&["127.0.0.3", "127.0.0.2"]), 1).await;
    for r in [&udp, &tcp] {
        assert_eq!(lookup(r, BLUE).await, ips(&["127.0.0.2", "127.0.0.3"]));
    }

    // IPv6 beside IPv4.
    dns.set(BLUE, &ips(&["127.0.0.1", "::1"]), 1).await;
    assert_eq!(lookup(&udp, BLUE).await, ips(&["127.0.0.1", "::1"]));

    // Gone: the name no longer resolves; another name never did.
    dns.set(BLUE, &[], 1).await;
    for r in [&udp, &tcp] {
        assert!(r.lookup_ip(BLUE).await.is_err());
        assert!(r
            .lookup_ip("translation-api-green.default.svc.cluster.local.")
            .await
            .is_err());
    }
}
