//! `switchyard switch` and `switchyard status` over a fleet of replicas:
//! the replicas are the `--admin` URLs, or every A/AAAA record of an
//! `--admin-dns NAME:PORT` (a headless admin Service), re-resolved while
//! the command polls. The admin API is spoken with hyper's HTTP/1.1 client,
//! one connection per request, each bounded by [`REQUEST_DEADLINE`].
//!
//! A switch reads each replica's `/status` (its own `if_generation`), posts
//! to all of them at once, retries a "not ready" 409 and re-reads the
//! status after a generation conflict until `--timeout`, then polls until
//! every replica reports the target; [`switch`] returns the table of what
//! each did, and whether they all agree.

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Method, StatusCode};
use http_body_util::{BodyExt, Full};
use serde::Serialize;

use crate::admin::MAX_DRAIN_WAIT;
use crate::status::Status;

/// How long one admin request may take (a `"wait":"drained"` post: its
/// timeout more).
pub const REQUEST_DEADLINE: Duration = Duration::from_secs(5);
/// The pause between two tries of a replica, and between two polls.
pub const RETRY_EVERY: Duration = Duration::from_millis(100);

/// Where the replicas are: `--admin URL...` or `--admin-dns NAME:PORT`.
#[derive(Debug, Clone, clap::Args)]
pub struct Replicas {
    /// Admin URLs of the replicas (`http://10.0.0.5:9901`); repeat or list.
    #[arg(long, num_args = 1.., required_unless_present = "admin_dns", conflicts_with = "admin_dns")]
    pub admin: Vec<String>,
    /// A name whose A/AAAA records are the replicas (a headless admin
    /// Service), and the admin port: `switchyard-admin.default.svc.cluster.local:9901`.
    #[arg(long, value_name = "NAME:PORT")]
    pub admin_dns: Option<String>,
    /// The DNS server to ask (`IP:PORT`) instead of the system's resolver configuration.
    #[arg(long, value_name = "IP:PORT", requires = "admin_dns")]
    pub dns_server: Option<SocketAddr>,
}

/// `switchyard switch`.
#[derive(Debug, Clone, clap::Args)]
pub struct SwitchArgs {
    /// The pool to switch every replica to.
    pub pool: String,
    #[command(flatten)]
    pub replicas: Replicas,
    /// A file holding the admin token (`[admin] token_file`).
    #[arg(long)]
    pub token_file: Option<PathBuf>,
    /// Switch even to a pool that is not ready (the gate).
    #[arg(long)]
    pub force: bool,
    /// A split: the pool gets N % of the requests, the rest stays on the
    /// pool with the largest other share (see the admin API's `weight`).
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u8).range(0..=100))]
    pub weight: Option<u8>,
    /// `drained`: each replica answers once its old pool has nothing in flight.
    #[arg(long, value_parser = ["drained"])]
    pub wait: Option<String>,
    /// How long the whole command may take (humantime).
    #[arg(long, default_value = "30s", value_parser = humantime::parse_duration)]
    pub timeout: Duration,
    /// Leave alone (and do not wait for) replicas whose upstreams file
    /// already names the pool: their overrides stay.
    #[arg(long)]
    pub if_file_differs: bool,
    /// Print JSON instead of a table.
    #[arg(long)]
    pub json: bool,
    /// When not every replica switched, switch back the ones that did.
    #[arg(long)]
    pub rollback_on_partial: bool,
}

/// `switchyard status`.
#[derive(Debug, Clone, clap::Args)]
pub struct StatusArgs {
    #[command(flatten)]
    pub replicas: Replicas,
    /// Print JSON instead of text.
    #[arg(long)]
    pub json: bool,
    /// Exit 0 only when every replica serves this pool (not merely the
    /// same one): what `helm test` runs against the values' `active`.
    #[arg(long, value_name = "POOL")]
    pub expect: Option<String>,
}

/// Why a fleet command could not do its job at all.
#[derive(Debug, thiserror::Error)]
pub enum FleetError {
    /// An `--admin` value that is not an `http://host:port` URL.
    #[error("`{0}` is not an admin URL (http://host:port)")]
    BadUrl(String),
    /// `--admin-dns` is not `NAME:PORT`.
    #[error("`{0}` is not NAME:PORT")]
    BadDnsTarget(String),
    /// The resolver could not be set up or the name not resolved.
    #[error("resolving {name}: {reason}")]
    Resolve {
        /// The name.
        name: String,
        /// Why.
        reason: String,
    },
    /// The token file could not be read.
    #[error("cannot read the token file {}: {source}", path.display())]
    Token {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// Nothing to act on.
    #[error("no replica: {0}")]
    NoReplica(String),
}

/// How to find the replicas, resolved again while polling.
pub struct Finder {
    urls: Vec<String>,
    dns: Option<(String, u16, hickory_resolver::TokioResolver)>,
}

impl Finder {
    /// From the flags.
    pub fn new(r: &Replicas) -> Result<Finder, FleetError> {
        let Some(target) = &r.admin_dns else {
            let urls = r
                .admin
                .iter()
                .map(|u| {
                    let u = u.trim_end_matches('/');
                    parse_base(u).map(|_| u.to_string())
                })
                .collect::<Result<Vec<_>, _>>()?;
            return Ok(Finder { urls, dns: None });
        };
        let (name, port) = target
            .rsplit_once(':')
            .and_then(|(n, p)| Some((n, p.parse::<u16>().ok()?)))
            .filter(|(n, _)| !n.is_empty())
            .ok_or_else(|| FleetError::BadDnsTarget(target.clone()))?;
        let resolve_err = |reason: String| FleetError::Resolve {
            name: name.to_string(),
            reason,
        };
        use hickory_resolver::config::{NameServerConfig, ResolverConfig};
        use hickory_resolver::net::runtime::TokioRuntimeProvider;
        let mut builder = match r.dns_server {
            Some(server) => {
                let mut udp = NameServerConfig::udp(server.ip());
                for c in &mut udp.connections {
                    c.port = server.port();
                }
                hickory_resolver::TokioResolver::builder_with_config(
                    ResolverConfig::from_name_servers(vec![udp]),
                    TokioRuntimeProvider::default(),
                )
            }
            None => {
                hickory_resolver::TokioResolver::builder_tokio().map_err(|e| resolve_err(e.to_string()))?
            }
        };
        // Each look is a fresh answer: pods come and go while the command polls.
        builder.options_mut().cache_size = 0;
        let resolver = builder.build().map_err(|e| resolve_err(e.to_string()))?;
        Ok(Finder {
            urls: Vec::new(),
            dns: Some((name.to_string(), port, resolver)),
        })
    }

    /// The replicas now: the URLs, or one `http://IP:PORT` per A/AAAA record.
    pub async fn find(&self) -> Result<Vec<String>, FleetError> {
        let Some((name, port, resolver)) = &self.dns else {
            return Ok(self.urls.clone());
        };
        let ips: Vec<IpAddr> = resolver
            .lookup_ip(name.as_str())
            .await
            .map_err(|e| FleetError::Resolve {
                name: name.clone(),
                reason: e.to_string(),
            })?
            .iter()
            .collect();
        let mut urls: Vec<String> = ips
            .into_iter()
            .map(|ip| format!("http://{}", SocketAddr::new(ip, *port)))
            .collect();
        urls.sort();
        urls.dedup();
        Ok(urls)
    }
}

/// `(host, port, authority)` of an admin base URL.
fn parse_base(base: &str) -> Result<(String, u16, String), FleetError> {
    let bad = || FleetError::BadUrl(base.to_string());
    let uri: http::Uri = base.parse().map_err(|_| bad())?;
    if uri.scheme_str() != Some("http") {
        return Err(bad());
    }
    let authority = uri.authority().ok_or_else(bad)?;
    let host = authority.host().trim_start_matches('[').trim_end_matches(']');
    Ok((
        host.to_string(),
        authority.port_u16().unwrap_or(80),
        authority.as_str().to_string(),
    ))
}

/// One admin request on a new connection: the status and the body, or why
/// there was none (unreachable, no answer within `within`).
pub async fn call(
    base: &str,
    method: Method,
    path: &str,
    body: Option<String>,
    token: Option<&str>,
    within: Duration,
) -> Result<(StatusCode, Bytes), String> {
    let (host, port, authority) = parse_base(base).map_err(|e| e.to_string())?;
    let exchange = async {
        let stream = tokio::net::TcpStream::connect((host.as_str(), port))
            .await
            .map_err(|e| format!("unreachable: {e}"))?;
        let (mut send, conn) = hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
            .await
            .map_err(|e| format!("unreachable: {e}"))?;
        tokio::spawn(conn);
        let mut req = http::Request::builder()
            .method(method)
            .uri(path)
            .header(http::header::HOST, authority.as_str());
        if body.is_some() {
            req = req.header(http::header::CONTENT_TYPE, "application/json");
        }
        if let Some(t) = token {
            req = req.header(http::header::AUTHORIZATION, format!("Bearer {t}"));
        }
        let req = req
            .body(Full::new(Bytes::from(body.unwrap_or_default())))
            .map_err(|e| e.to_string())?;
        let res = send
            .send_request(req)
            .await
            .map_err(|e| format!("no answer: {e}"))?;
        let status = res.status();
        let bytes = res
            .into_body()
            .collect()
            .await
            .map_err(|e| format!("answer cut: {e}"))?
            .to_bytes();
        Ok((status, bytes))
    };
    tokio::time::timeout(within, exchange).await.map_err(|_| {
        format!(
            "unreachable: no answer within {}",
            humantime::format_duration(within)
        )
    })?
}

/// `GET /status` of one replica, decoded.
pub async fn status_of(base: &str) -> Result<Status, String> {
    let (code, body) = call(base, Method::GET, "/status", None, None, REQUEST_DEADLINE).await?;
    if !code.is_success() {
        return Err(format!("/status answered {code}: {}", error_text(&body)));
    }
    serde_json::from_slice(&body).map_err(|e| format!("/status is not a status document: {e}"))
}

/// The `errors` of a JSON error answer, or the body as text.
fn error_text(body: &[u8]) -> String {
    serde_json::from_slice::<serde_json::Value>(body)
        .ok()
        .and_then(|v| {
            let list: Vec<String> = v["errors"]
                .as_array()?
                .iter()
                .filter_map(|e| e.as_str().map(str::to_string))
                .collect();
            (!list.is_empty()).then(|| list.join("; "))
        })
        .unwrap_or_else(|| String::from_utf8_lossy(body).trim().to_string())
}

/// What happened at one replica.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum State {
    /// It switched to the pool.
    Switched,
    /// The pool was already active there.
    Already,
    /// `--if-file-differs`: its file already names the pool; left alone.
    Skipped,
    /// It switched, but its old pool did not drain within the timeout.
    NotDrained,
    /// It refused (401, 409 not ready at the timeout, 400…): see `reason`.
    Refused,
    /// It could not be reached (or did not answer).
    Unreachable,
    /// It switched, and `--rollback-on-partial` switched it back.
    RolledBack,
    /// It was found while polling and is gone from the name since.
    Gone,
}

impl State {
    fn as_str(self) -> &'static str {
        match self {
            State::Switched => "switched",
            State::Already => "already",
            State::Skipped => "skipped",
            State::NotDrained => "not drained",
            State::Refused => "refused",
            State::Unreachable => "unreachable",
            State::RolledBack => "rolled back",
            State::Gone => "gone",
        }
    }
}

/// One replica's line of a switch.
#[derive(Debug, Clone, Serialize)]
pub struct Row {
    /// Its admin URL.
    pub replica: String,
    /// The active pool before (null when it was never read).
    pub before: Option<String>,
    /// The active pool it reports now (null when unknown).
    pub after: Option<String>,
    /// From the command's start to its acknowledgement, in ms.
    pub took_ms: Option<u64>,
    /// What happened.
    pub state: State,
    /// Why it refused or could not be reached; for a skipped one, what it serves.
    pub reason: Option<String>,
    /// The old pool's drain, when `--wait drained`.
    pub drain_ms: Option<u64>,
    /// Generation after its switch (for a rollback's compare-and-swap).
    #[serde(skip)]
    generation: Option<u64>,
}

/// The result of `switchyard switch`.
#[derive(Debug, Clone, Serialize)]
pub struct SwitchReport {
    /// The target pool.
    pub pool: String,
    /// Whether every replica not skipped reports the pool.
    pub agree: bool,
    /// One row per replica.
    pub replicas: Vec<Row>,
}

fn ms(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// Reads the token file (trimmed), if any.
pub fn read_token(path: Option<&PathBuf>) -> Result<Option<String>, FleetError> {
    path.map(|p| {
        std::fs::read_to_string(p)
            .map(|t| t.trim().to_string())
            .map_err(|source| FleetError::Token {
                path: p.clone(),
                source,
            })
    })
    .transpose()
}

/// Switches one replica: its status, its own `if_generation`, the post;
/// "not ready" 409s and unreachable retried and a generation conflict
/// re-read until `deadline`.
async fn switch_one(
    replica: String,
    a: &SwitchArgs,
    token: Option<&str>,
    started: Instant,
    deadline: Instant,
) -> Row {
    let mut row = Row {
        replica,
        before: None,
        after: None,
        took_ms: None,
        state: State::Unreachable,
        reason: None,
        drain_ms: None,
        generation: None,
    };
    loop {
        let outcome = attempt(&mut row, a, token, deadline).await;
        match outcome {
            Some(state) => {
                row.state = state;
                if matches!(state, State::Switched | State::Already | State::NotDrained) {
                    row.took_ms = Some(ms(started.elapsed()));
                }
                return row;
            }
            None if Instant::now() + RETRY_EVERY >= deadline => {
                // The last try's reason stays; its state is the kind of failure.
                if row.state != State::Unreachable {
                    row.state = State::Refused;
                }
                return row;
            }
            None => tokio::time::sleep(RETRY_EVERY).await,
        }
    }
}

/// One try; `None`: try again (the reason and the kind are in `row`).
async fn attempt(row: &mut Row, a: &SwitchArgs, token: Option<&str>, deadline: Instant) -> Option<State> {
    let st = match status_of(&row.replica).await {
        Ok(st) => st,
        Err(e) => {
            row.state = State::Unreachable;
            row.reason = Some(e);
            return None;
        }
    };
    row.before.get_or_insert_with(|| served(&st));
    if a.if_file_differs && st.file_active == a.pool {
        row.after = Some(served(&st));
        row.reason = Some(format!("its file names {}; it serves {}", a.pool, served(&st)));
        return Some(State::Skipped);
    }
    let mut body = serde_json::json!({"to": a.pool, "if_generation": st.generation});
    if a.force {
        body["force"] = true.into();
    }
    if let Some(w) = a.weight {
        body["weight"] = w.into();
    }
    let mut within = REQUEST_DEADLINE;
    if a.wait.is_some() {
        let left = deadline
            .saturating_duration_since(Instant::now())
            .clamp(Duration::from_millis(1), MAX_DRAIN_WAIT);
        body["wait"] = "drained".into();
        body["timeout"] = format!("{}ms", left.as_millis()).into();
        within += left;
    }
    let (code, answer) = match call(
        &row.replica,
        Method::POST,
        "/switch",
        Some(body.to_string()),
        token,
        within,
    )
    .await
    {
        Ok(r) => r,
        Err(e) => {
            row.state = State::Unreachable;
            row.reason = Some(e);
            return None;
        }
    };
    let json: serde_json::Value = serde_json::from_slice(&answer).unwrap_or_default();
    let read_outcome = |row: &mut Row| {
        row.after = json["active"].as_str().map(|active| {
            let split =
                serde_json::from_value::<std::collections::BTreeMap<String, u8>>(json["split"].clone()).ok();
            describe(active, split.as_ref())
        });
        row.generation = json["generation"].as_u64();
        row.drain_ms = json["drain_ms"].as_u64();
    };
    match code {
        StatusCode::OK => {
            read_outcome(row);
            row.reason = None;
            Some(if json["changed"] == true {
                State::Switched
            } else {
                State::Already
            })
        }
        StatusCode::GATEWAY_TIMEOUT => {
            read_outcome(row);
            row.reason = Some(error_text(&answer));
            Some(if json["changed"] == true {
                State::NotDrained
            } else {
                State::Refused
            })
        }
        StatusCode::CONFLICT => {
            // A generation conflict (someone switched it in between) is
            // re-read at once; "not ready" is retried until the deadline.
            let reason = error_text(&answer);
            row.state = State::Refused;
            row.reason = Some(format!("409 {reason}"));
            None
        }
        other => {
            row.reason = Some(format!("{} {}", other.as_u16(), error_text(&answer)));
            Some(State::Refused)
        }
    }
}

/// The replicas a switch starts with. A name is resolved again every
/// [`RETRY_EVERY`] until it has an address or `deadline` passes (a Helm
/// hook can start before the pods have one), saying so once on stderr.
async fn first_replicas(finder: &Finder, deadline: Instant) -> Result<Vec<String>, FleetError> {
    let mut said = false;
    loop {
        let why = match finder.find().await {
            Ok(found) if !found.is_empty() => return Ok(found),
            Ok(_) => FleetError::NoReplica("the name has no address".into()),
            Err(e) => e,
        };
        if finder.dns.is_none() || Instant::now() + RETRY_EVERY >= deadline {
            return Err(why);
        }
        if !said {
            eprintln!("waiting for a replica until the timeout: {why}");
            said = true;
        }
        tokio::time::sleep(RETRY_EVERY).await;
    }
}

/// `switchyard switch`: the report (every row) once every replica reports
/// the pool or the timeout passed.
pub async fn switch(a: &SwitchArgs) -> Result<SwitchReport, FleetError> {
    let token = read_token(a.token_file.as_ref())?;
    let finder = Finder::new(&a.replicas)?;
    let started = Instant::now();
    let deadline = started + a.timeout;
    let replicas = first_replicas(&finder, deadline).await?;
    let mut rows: Vec<Row> = futures_util::future::join_all(
        replicas
            .into_iter()
            .map(|r| switch_one(r, a, token.as_deref(), started, deadline)),
    )
    .await;
    // Poll until every replica reports the pool; replicas that appear
    // under the name meanwhile (a rolling update) are switched too.
    loop {
        let now_found = finder.find().await.ok();
        if let Some(found) = &now_found {
            let new: Vec<String> = found
                .iter()
                .filter(|u| !rows.iter().any(|r| &r.replica == *u))
                .cloned()
                .collect();
            let more = futures_util::future::join_all(
                new.into_iter()
                    .map(|r| switch_one(r, a, token.as_deref(), started, deadline)),
            )
            .await;
            rows.extend(more);
            for r in &mut rows {
                if !found.contains(&r.replica) && r.state != State::Gone && finder.dns.is_some() {
                    r.state = State::Gone;
                }
            }
        }
        let checks = rows.iter().map(|r| async move {
            match r.state {
                State::Switched | State::Already | State::NotDrained => {
                    status_of(&r.replica).await.ok().map(|s| served(&s))
                }
                _ => None,
            }
        });
        let now: Vec<Option<String>> = futures_util::future::join_all(checks).await;
        for (r, active) in rows.iter_mut().zip(now) {
            if let Some(active) = active {
                r.after = Some(active);
            }
        }
        if agree(&rows, &a.pool, a.weight) || Instant::now() >= deadline {
            break;
        }
        tokio::time::sleep(RETRY_EVERY).await;
    }
    let all = agree(&rows, &a.pool, a.weight);
    if !all && a.rollback_on_partial {
        let token = token.as_deref();
        let backs = rows.iter().map(|r| async move {
            if !matches!(r.state, State::Switched | State::NotDrained) {
                return None;
            }
            let body = match r.generation {
                Some(g) => serde_json::json!({ "if_generation": g }).to_string(),
                None => String::new(),
            };
            let res = call(
                &r.replica,
                Method::POST,
                "/rollback",
                Some(body),
                token,
                REQUEST_DEADLINE,
            )
            .await;
            Some(match res {
                Ok((StatusCode::OK, b)) => Ok(serde_json::from_slice::<serde_json::Value>(&b)
                    .ok()
                    .and_then(|v| v["active"].as_str().map(str::to_string))),
                Ok((code, b)) => Err(format!("rollback refused: {} {}", code.as_u16(), error_text(&b))),
                Err(e) => Err(format!("rollback failed: {e}")),
            })
        });
        let results: Vec<_> = futures_util::future::join_all(backs).await;
        for (r, res) in rows.iter_mut().zip(results) {
            match res {
                Some(Ok(active)) => {
                    r.state = State::RolledBack;
                    r.after = active;
                }
                Some(Err(e)) => r.reason = Some(e),
                None => {}
            }
        }
    }
    Ok(SwitchReport {
        pool: match a.weight {
            Some(w) => format!("{} at {w} %", a.pool),
            None => a.pool.clone(),
        },
        agree: all,
        replicas: rows,
    })
}

/// Whether every replica that counts (not skipped, not gone) reports `pool`
/// (one whose old pool did not drain within `--wait drained`'s time does not).
/// With `weight`, every such replica gives `pool` that share, and they all
/// serve the same split.
fn agree(rows: &[Row], pool: &str, weight: Option<u8>) -> bool {
    let counted: Vec<&Row> = rows
        .iter()
        .filter(|r| !matches!(r.state, State::Skipped | State::Gone))
        .collect();
    let same: std::collections::BTreeSet<Option<&str>> = counted.iter().map(|r| r.after.as_deref()).collect();
    counted.iter().all(|r| {
        matches!(r.state, State::Switched | State::Already)
            && r.after
                .as_deref()
                .is_some_and(|after| share(after, pool) == weight.unwrap_or(100))
    }) && (weight.is_none() || same.len() <= 1)
}

/// What a replica serves, as one comparable string: the active pool, or a
/// split as `blue 90, green 10` (pools by name).
pub fn served(s: &Status) -> String {
    describe(&s.active, s.split.as_ref())
}

fn describe(active: &str, split: Option<&std::collections::BTreeMap<String, u8>>) -> String {
    match split {
        Some(w) if !w.is_empty() => w
            .iter()
            .map(|(p, n)| format!("{p} {n}"))
            .collect::<Vec<_>>()
            .join(", "),
        _ => active.to_string(),
    }
}

/// The share `pool` gets in what [`served`] says.
fn share(served: &str, pool: &str) -> u8 {
    if served == pool {
        return 100;
    }
    served
        .split(", ")
        .find_map(|part| {
            let (p, n) = part.rsplit_once(' ')?;
            (p == pool).then(|| n.parse().ok()).flatten()
        })
        .unwrap_or(0)
}

/// The switch report as a table.
pub fn render_switch(rep: &SwitchReport) -> String {
    let mut out = format!(
        "{:<32} {:<10} {:<10} {:>8}  state\n",
        "replica", "before", "after", "took"
    );
    for r in &rep.replicas {
        let took = r.took_ms.map_or("-".to_string(), |t| format!("{t}ms"));
        let mut state = r.state.as_str().to_string();
        if let Some(d) = r.drain_ms {
            state.push_str(&format!(" (drained in {d}ms)"));
        }
        if let Some(why) = &r.reason {
            state.push_str(&format!(": {why}"));
        }
        out.push_str(&format!(
            "{:<32} {:<10} {:<10} {:>8}  {state}\n",
            r.replica,
            r.before.as_deref().unwrap_or("-"),
            r.after.as_deref().unwrap_or("-"),
            took
        ));
    }
    if rep.agree {
        out.push_str(&format!("agree: every replica serves {}\n", rep.pool));
    } else {
        out.push_str(&format!("DISAGREE: not every replica serves {}\n", rep.pool));
    }
    out
}

/// One replica's `/status`, or why it could not be read.
#[derive(Debug, Clone, Serialize)]
pub struct ReplicaStatus {
    /// Its admin URL.
    pub replica: String,
    /// Its status document.
    pub status: Option<Status>,
    /// Why there is none.
    pub error: Option<String>,
}

/// The result of `switchyard status` over several replicas.
#[derive(Debug, Clone, Serialize)]
pub struct FleetStatus {
    /// Every replica was read and all have the same active pool.
    pub agree: bool,
    /// That pool, when they agree.
    pub active: Option<String>,
    /// One per replica.
    pub replicas: Vec<ReplicaStatus>,
}

/// Every replica's `/status`, read at once.
pub async fn fleet_status(r: &Replicas) -> Result<FleetStatus, FleetError> {
    let finder = Finder::new(r)?;
    let replicas = finder.find().await?;
    if replicas.is_empty() {
        return Err(FleetError::NoReplica("the name has no address".into()));
    }
    let read = futures_util::future::join_all(replicas.into_iter().map(|replica| async move {
        match status_of(&replica).await {
            Ok(s) => ReplicaStatus {
                replica,
                status: Some(s),
                error: None,
            },
            Err(e) => ReplicaStatus {
                replica,
                status: None,
                error: Some(e),
            },
        }
    }))
    .await;
    // Replicas are compared by what they serve: the active pool and a split.
    let actives: std::collections::BTreeSet<Option<String>> =
        read.iter().map(|r| r.status.as_ref().map(served)).collect();
    let agree = actives.len() == 1 && !actives.contains(&None);
    let active = if agree {
        actives.into_iter().next().flatten()
    } else {
        None
    };
    Ok(FleetStatus {
        agree,
        active,
        replicas: read,
    })
}

impl FleetStatus {
    /// The exit verdict: every replica read and on one pool, and that pool
    /// `expect` when one is given.
    pub fn passes(&self, expect: Option<&str>) -> bool {
        self.agree && expect.is_none_or(|want| self.active.as_deref() == Some(want))
    }
}

/// The fleet status as a table, one row per replica, then the verdict
/// (and, with `expect`, whether that is the pool they serve).
pub fn render_fleet(f: &FleetStatus, expect: Option<&str>) -> String {
    let mut out = format!(
        "{:<32} {:<8} {:<8} {:<10} {:<8} {:<8} {:>4}  {:<14} {:<18} drained\n",
        "replica", "active", "source", "file says", "override", "pending", "gen", "ready", "in flight"
    );
    for r in &f.replicas {
        let Some(s) = &r.status else {
            out.push_str(&format!(
                "{:<32} UNREACHABLE: {}\n",
                r.replica,
                r.error.as_deref().unwrap_or("")
            ));
            continue;
        };
        let list = |f: &dyn Fn(&str, &crate::status::PoolStatus) -> Option<String>| {
            let v: Vec<String> = s.pools.iter().filter_map(|(n, p)| f(n, p)).collect();
            if v.is_empty() {
                "-".to_string()
            } else {
                v.join(",")
            }
        };
        let ready = list(&|n, p| p.ready.then(|| n.to_string()));
        let inflight = list(&|n, p| Some(format!("{n}:{}", p.inflight)));
        let drained = list(&|n, p| p.drained.then(|| n.to_string()));
        out.push_str(&format!(
            "{:<32} {:<8} {:<8} {:<10} {:<8} {:<8} {:>4}  {:<14} {:<18} {drained}\n",
            r.replica,
            served(s),
            s.source,
            if s.file_active.is_empty() {
                "-"
            } else {
                &s.file_active
            },
            if s.overridden { "yes" } else { "no" },
            s.pending.as_ref().map_or("-", |p| p.active.as_str()),
            s.generation,
            ready,
            inflight,
        ));
    }
    match &f.active {
        Some(a) if f.agree => out.push_str(&format!("agree: every replica serves {a}\n")),
        _ => {
            out.push_str("DISAGREE: the replicas do not all serve the same pool (or one could not be read)\n")
        }
    }
    if let Some(want) = expect {
        if f.passes(Some(want)) {
            out.push_str(&format!("expected {want}: yes\n"));
        } else {
            out.push_str(&format!("expected {want}: NO, not every replica serves {want}\n"));
        }
    }
    out
}
