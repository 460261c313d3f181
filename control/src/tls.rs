//! TLS on TCP 2377 (rustls with ring): the manager's server configuration, the node's
//! client configurations, and gRPC channels over them.
//!
//! As SwarmKit does (`ca/config.go` `NewServerTLSConfig`, `NewClientTLSConfig`):
//! * a manager serves with its node certificate and asks every client for one, verifying
//!   it against the cluster root; a client without one is let through the handshake only
//!   so it can reach the CA's two join calls — every other call checks the certificate
//!   ([`crate::remote`]);
//! * nodes verify the manager against the cluster root under the server name
//!   `swarm-manager`, and present their own certificate;
//! * a joining node, which has no root yet, fetches it over TLS **without** verifying the
//!   server (`GetRemoteCA`: `InsecureSkipVerify`) and trusts it only if its digest is the
//!   one in the join token ([`crate::ca::RootCa::check_against`]).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, ServerConfig, SignatureScheme};
use tonic::transport::{Channel, Endpoint, Uri};

use crate::ca::MANAGER_ROLE;

/// How long a TLS handshake or a connection attempt may take.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// How long one call may take.
pub const CALL_TIMEOUT: Duration = Duration::from_secs(10);

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn certs(pem: &str) -> anyhow::Result<Vec<CertificateDer<'static>>> {
    let v = rustls_pemfile::certs(&mut pem.as_bytes()).collect::<Result<Vec<_>, _>>()?;
    anyhow::ensure!(!v.is_empty(), "no certificate in PEM");
    Ok(v)
}

fn key(pem: &str) -> anyhow::Result<PrivateKeyDer<'static>> {
    rustls_pemfile::private_key(&mut pem.as_bytes())?
        .ok_or_else(|| anyhow::anyhow!("no private key in PEM"))
}

fn roots(root_pem: &str) -> anyhow::Result<Arc<RootCertStore>> {
    let mut r = RootCertStore::empty();
    for c in certs(root_pem)? {
        r.add(c)?;
    }
    Ok(Arc::new(r))
}

/// A manager's server side: its node certificate; client certificates optional but, when
/// presented, verified against the cluster root.
pub fn server_config(
    root_pem: &str,
    cert_pem: &str,
    key_pem: &str,
) -> anyhow::Result<Arc<ServerConfig>> {
    let verifier =
        rustls::server::WebPkiClientVerifier::builder_with_provider(roots(root_pem)?, provider())
            .allow_unauthenticated()
            .build()?;
    let mut c = ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()?
        .with_client_cert_verifier(verifier)
        .with_single_cert(certs(cert_pem)?, key(key_pem)?)?;
    c.alpn_protocols = vec![b"h2".to_vec()];
    Ok(Arc::new(c))
}

/// A node's client side: the manager verified against the root; the node's own
/// certificate presented when it has one.
pub fn client_config(
    root_pem: &str,
    identity: Option<(&str, &str)>,
) -> anyhow::Result<Arc<ClientConfig>> {
    let b = ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots(root_pem)?);
    let mut c = match identity {
        Some((cert, k)) => b.with_client_auth_cert(certs(cert)?, key(k)?)?,
        None => b.with_no_client_auth(),
    };
    c.alpn_protocols = vec![b"h2".to_vec()];
    Ok(Arc::new(c))
}

/// The joining node's first connection: the server is not verified (its root is not known
/// yet); only the root's digest, checked by the caller, makes it trusted.
pub fn bootstrap_config() -> anyhow::Result<Arc<ClientConfig>> {
    let p = provider();
    let mut c = ClientConfig::builder_with_provider(p.clone())
        .with_safe_default_protocol_versions()?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(AnyServer(p)))
        .with_no_client_auth();
    c.alpn_protocols = vec![b"h2".to_vec()];
    Ok(Arc::new(c))
}

/// Accepts any server certificate (handshake signatures are still checked).
#[derive(Debug)]
struct AnyServer(Arc<CryptoProvider>);

impl ServerCertVerifier for AnyServer {
    fn verify_server_cert(
        &self,
        _: &CertificateDer<'_>,
        _: &[CertificateDer<'_>],
        _: &ServerName<'_>,
        _: &[u8],
        _: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// A gRPC channel to the manager at `addr` over TLS with `config`, the manager named
/// `swarm-manager`. Connects lazily; calls time out after [`CALL_TIMEOUT`].
pub fn channel(addr: SocketAddr, config: Arc<ClientConfig>) -> Channel {
    channel_with_timeouts(addr, config, CONNECT_TIMEOUT, CALL_TIMEOUT)
}

/// [`channel`] whose calls time out after `timeout`.
pub fn channel_with_timeout(
    addr: SocketAddr,
    config: Arc<ClientConfig>,
    timeout: Duration,
) -> Channel {
    channel_with_timeouts(addr, config, CONNECT_TIMEOUT, timeout)
}

/// [`channel`] whose connection attempts time out after `connect`, calls after `call`.
pub fn channel_with_timeouts(
    addr: SocketAddr,
    config: Arc<ClientConfig>,
    connect: Duration,
    timeout: Duration,
) -> Channel {
    let connector = tower::service_fn(move |_: Uri| {
        let config = config.clone();
        async move {
            let tcp = tokio::time::timeout(connect, tokio::net::TcpStream::connect(addr))
                .await
                .map_err(|_| {
                    std::io::Error::new(std::io::ErrorKind::TimedOut, "connect timed out")
                })??;
            // Small request/response messages (Raft, heartbeats): Nagle's algorithm with
            // the peer's delayed ACK would hold each for up to 40 ms.
            tcp.set_nodelay(true)?;
            let name = ServerName::try_from(MANAGER_ROLE).expect("valid name");
            let tls = tokio::time::timeout(
                connect,
                tokio_rustls::TlsConnector::from(config).connect(name, tcp),
            )
            .await
            .map_err(|_| {
                std::io::Error::new(std::io::ErrorKind::TimedOut, "TLS handshake timed out")
            })??;
            Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(tls))
        }
    });
    Endpoint::from_static("http://swarm-manager")
        .connect_timeout(connect)
        .timeout(timeout)
        .connect_with_connector_lazy(connector)
}
