//! A real DNS server on loopback (hickory-server): one zone, UDP and TCP on
//! the same port, whose records a test replaces at run time — as a headless
//! Kubernetes Service's pod IPs change. 127.0.0.2, 127.0.0.3 … are loopback
//! addresses on Linux, so test upstreams can really listen on the "pod IPs".

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use hickory_proto::rr::rdata::{A, AAAA, SOA};
use hickory_proto::rr::{LowerName, Name, RData, Record, RecordSet, RecordType, RrKey};
use hickory_server::store::in_memory::InMemoryZoneHandler;
use hickory_server::zone_handler::{AxfrPolicy, Catalog, ZoneHandler, ZoneType};
use hickory_server::Server;

/// The serial every record of the zone carries (nothing transfers the zone).
const SERIAL: u32 = 1;

/// A DNS server answering for one zone on 127.0.0.1; stops on drop.
pub struct DnsServer {
    addr: SocketAddr,
    origin: Name,
    zone: Arc<InMemoryZoneHandler>,
    /// Holds the UDP and TCP tasks: dropping the server ends them.
    _server: Server<Catalog>,
}

/// A name: absolute as given, else relative to `origin`.
fn name_in(origin: &Name, name: &str) -> Name {
    let n = Name::from_ascii(name).unwrap();
    if n.is_fqdn() {
        n
    } else {
        n.append_domain(origin).unwrap()
    }
}

impl DnsServer {
    /// Serves the zone `origin` (e.g. `default.svc.cluster.local.`; it gets
    /// an SOA and no other record) on 127.0.0.1, UDP and TCP on one port.
    /// Must run inside a tokio runtime, which then runs the server.
    pub async fn start(origin: &str) -> DnsServer {
        DnsServer::start_at(origin, None).await
    }

    /// As [`DnsServer::start`], on `addr` when given (to come back on the
    /// address a stopped server had: a name server that was away).
    pub async fn start_at(origin: &str, addr: Option<SocketAddr>) -> DnsServer {
        let origin = Name::from_ascii(origin).unwrap();
        let mut soa_set = RecordSet::new(origin.clone(), RecordType::SOA, SERIAL);
        soa_set.insert(
            Record::from_rdata(
                origin.clone(),
                3600,
                RData::SOA(SOA::new(
                    name_in(&origin, "ns"),
                    name_in(&origin, "hostmaster"),
                    SERIAL,
                    3600,
                    600,
                    86400,
                    1,
                )),
            ),
            SERIAL,
        );
        let records = BTreeMap::from([(RrKey::new(LowerName::new(&origin), RecordType::SOA), soa_set)]);
        let zone = Arc::new(
            InMemoryZoneHandler::new(origin.clone(), records, ZoneType::Primary, AxfrPolicy::Deny).unwrap(),
        );
        let mut catalog = Catalog::new();
        catalog.upsert(
            LowerName::new(&origin),
            vec![zone.clone() as Arc<dyn ZoneHandler>],
        );
        // UDP on a free port, then TCP on the same one (taken by someone
        // else in between: try another).
        let (udp, tcp) = loop {
            if let Some(addr) = addr {
                let udp = tokio::net::UdpSocket::bind(addr).await.unwrap();
                let tcp = tokio::net::TcpListener::bind(addr).await.unwrap();
                break (udp, tcp);
            }
            let udp = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
            let addr = udp.local_addr().unwrap();
            if let Ok(tcp) = tokio::net::TcpListener::bind(addr).await {
                break (udp, tcp);
            }
        };
        let addr = udp.local_addr().unwrap();
        let mut server = Server::new(catalog);
        server.register_socket(udp);
        server.register_listener(tcp, Duration::from_secs(5), 64);
        DnsServer {
            addr,
            origin,
            zone,
            _server: server,
        }
    }

    /// The address (UDP and TCP).
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The zone's origin.
    pub fn origin(&self) -> &Name {
        &self.origin
    }

    /// Replaces the A and AAAA records of `name` (absolute, or relative to
    /// the origin) with `ips`, with time-to-live `ttl` seconds; no `ips`:
    /// the name no longer exists.
    pub async fn set(&self, name: &str, ips: &[IpAddr], ttl: u32) {
        let name = name_in(&self.origin, name);
        let mut records = self.zone.records_mut().await;
        for (rtype, want_v4) in [(RecordType::A, true), (RecordType::AAAA, false)] {
            let key = RrKey::new(LowerName::new(&name), rtype);
            let mut set = RecordSet::with_ttl(name.clone(), rtype, ttl);
            for ip in ips {
                let rdata = match ip {
                    IpAddr::V4(v4) if want_v4 => RData::A(A(*v4)),
                    IpAddr::V6(v6) if !want_v4 => RData::AAAA(AAAA(*v6)),
                    _ => continue,
                };
                set.insert(Record::from_rdata(name.clone(), ttl, rdata), SERIAL);
            }
            if set.is_empty() {
                records.remove(&key);
            } else {
                records.insert(key, Arc::new(set));
            }
        }
    }
}
