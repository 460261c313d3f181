//! The embedded DNS server: one hickory server per endpoint, listening on 127.0.0.11:53
//! (UDP and TCP) *inside* the endpoint's network namespace, as Docker's resolver does.
//!
//! The sockets are bound by a short-lived thread that enters the namespace (`setns`), so
//! they live in the namespace while the server runs on the daemon's tokio runtime. Names
//! are answered from the current [`DnsView`] for the networks the endpoint is on: service
//! name → VIP (or task addresses in dnsrr mode), `tasks.<service>` → task addresses,
//! task and container names → addresses. Known names answer A queries only (other types
//! get an empty NOERROR, like Docker's); everything else is forwarded to the host's
//! resolvers (`/etc/resolv.conf` of the daemon).

use std::fs::File;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use hickory_proto::op::{Header, MessageType, OpCode, ResponseCode};
use hickory_proto::rr::{rdata::A, RData, Record, RecordType};
use hickory_resolver::TokioAsyncResolver;
use hickory_server::authority::MessageResponseBuilder;
use hickory_server::server::{Request, RequestHandler, ResponseHandler, ResponseInfo};
use hickory_server::ServerFuture;

use crate::cluster::DnsView;

/// Docker's embedded DNS address.
pub const DNS_ADDR: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 11);

/// TTL of answers (Docker answers with 600 s; a short one makes task changes visible).
const TTL: u32 = 5;

/// The shared state of every endpoint's server.
#[derive(Clone)]
pub struct Dns {
    view: Arc<ArcSwap<DnsView>>,
    upstream: Option<TokioAsyncResolver>,
}

impl Dns {
    /// A DNS with an empty view, forwarding to `upstream`, or to the resolvers in
    /// `/etc/resolv.conf` when `None`.
    pub fn new(upstream: Option<SocketAddr>) -> Dns {
        let conf = match upstream {
            Some(a) => Some((
                hickory_resolver::config::ResolverConfig::from_parts(
                    None,
                    Vec::new(),
                    hickory_resolver::config::NameServerConfigGroup::from_ips_clear(
                        &[a.ip()],
                        a.port(),
                        true,
                    ),
                ),
                hickory_resolver::config::ResolverOpts::default(),
            )),
            None => hickory_resolver::system_conf::read_system_conf().ok(),
        };
        let upstream = conf.map(|(c, mut o)| {
            o.timeout = Duration::from_secs(2);
            o.attempts = 1;
            o.cache_size = 0;
            TokioAsyncResolver::tokio(c, o)
        });
        Dns {
            view: Arc::new(ArcSwap::from_pointee(DnsView::default())),
            upstream,
        }
    }

    /// Publishes a new view.
    pub fn set_view(&self, v: DnsView) {
        self.view.store(Arc::new(v));
    }

    /// Starts a server in namespace `ns` for an endpoint on `networks`. The returned handle
    /// stops it (and closes its sockets) when aborted.
    pub fn serve(
        &self,
        ns: &str,
        networks: Vec<String>,
    ) -> anyhow::Result<tokio::task::JoinHandle<()>> {
        let (udp, tcp) = bind_in_namespace(ns)?;
        let udp = tokio::net::UdpSocket::from_std(udp)?;
        let tcp = tokio::net::TcpListener::from_std(tcp)?;
        let handler = EndpointDns {
            dns: self.clone(),
            networks,
        };
        let mut server = ServerFuture::new(handler);
        server.register_socket(udp);
        server.register_listener(tcp, Duration::from_secs(5));
        Ok(tokio::spawn(async move {
            let _ = server.block_until_done().await;
        }))
    }
}

/// Binds 127.0.0.11:53 (UDP and TCP) inside namespace `ns`.
fn bind_in_namespace(ns: &str) -> anyhow::Result<(std::net::UdpSocket, std::net::TcpListener)> {
    let path = format!("/run/netns/{ns}");
    let ns = ns.to_owned();
    std::thread::spawn(move || -> anyhow::Result<_> {
        let f = File::open(&path).map_err(|e| anyhow::anyhow!("opening {path}: {e}"))?;
        nix::sched::setns(&f, nix::sched::CloneFlags::CLONE_NEWNET)
            .map_err(|e| anyhow::anyhow!("entering namespace {ns}: {e}"))?;
        let addr = SocketAddr::from((DNS_ADDR, 53));
        let udp = std::net::UdpSocket::bind(addr)
            .map_err(|e| anyhow::anyhow!("binding {addr}/udp in {ns}: {e}"))?;
        let tcp = std::net::TcpListener::bind(addr)
            .map_err(|e| anyhow::anyhow!("binding {addr}/tcp in {ns}: {e}"))?;
        udp.set_nonblocking(true)?;
        tcp.set_nonblocking(true)?;
        Ok((udp, tcp))
    })
    .join()
    .map_err(|_| anyhow::anyhow!("namespace thread panicked"))?
}

struct EndpointDns {
    dns: Dns,
    networks: Vec<String>,
}

impl EndpointDns {
    async fn answer(&self, request: &Request) -> (ResponseCode, Vec<Record>) {
        let q = request.query();
        let name = q.name().to_string();
        let qtype = q.query_type();
        let view = self.dns.view.load();
        if let Some(ips) = view.resolve(&self.networks, &name) {
            if qtype != RecordType::A {
                return (ResponseCode::NoError, Vec::new());
            }
            let owner = q.original().name().clone();
            let records = ips
                .into_iter()
                .map(|ip| Record::from_rdata(owner.clone(), TTL, RData::A(A(ip))))
                .collect();
            return (ResponseCode::NoError, records);
        }
        let Some(up) = &self.dns.upstream else {
            return (ResponseCode::ServFail, Vec::new());
        };
        match up.lookup(q.original().name().clone(), qtype).await {
            Ok(l) => (ResponseCode::NoError, l.records().to_vec()),
            Err(e) => match e.kind() {
                hickory_resolver::error::ResolveErrorKind::NoRecordsFound {
                    response_code, ..
                } => (*response_code, Vec::new()),
                _ => (ResponseCode::ServFail, Vec::new()),
            },
        }
    }
}

#[async_trait::async_trait]
impl RequestHandler for EndpointDns {
    async fn handle_request<R: ResponseHandler>(
        &self,
        request: &Request,
        mut response_handle: R,
    ) -> ResponseInfo {
        let builder = MessageResponseBuilder::from_message_request(request);
        let mut header = Header::response_from_request(request.header());
        header.set_recursion_available(true);
        let (code, records) =
            if request.op_code() != OpCode::Query || request.message_type() != MessageType::Query {
                (ResponseCode::NotImp, Vec::new())
            } else {
                self.answer(request).await
            };
        header.set_response_code(code);
        let response = builder.build(header, records.iter(), &[], &[], &[]);
        match response_handle.send_response(response).await {
            Ok(info) => info,
            Err(_) => {
                let mut h = Header::new();
                h.set_response_code(ResponseCode::ServFail);
                h.into()
            }
        }
    }
}
