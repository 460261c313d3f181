//! The cluster's certificate authority and join tokens, as SwarmKit defines them. Pure
//! logic: keys, certificates and tokens in, keys, certificates and tokens out.
//!
//! References (moby/swarmkit):
//! * `ca/certificates.go` `CreateRootCA`: the root is ECDSA P-256, CN `swarm-ca`, valid
//!   20 years (`RootCAExpiration`); `NewRootCA`: the root's **digest is SHA-256 over its PEM
//!   bytes** (`digest.FromBytes(rootCertBytes)`), which is what a join token pins;
//! * `ca/config.go` `GenerateJoinToken`/`ParseJoinToken`: `SWMTKN-1-<digest as a base-36
//!   number, 0-padded to 50>-<16 random bytes as a base-36 number, 0-padded to 25>`;
//! * `ca/server.go` `IssueNodeCertificate`: the role comes from which token matches,
//!   compared in constant time (`subtle.ConstantTimeCompare`), and the CA ignores the CSR's
//!   subject: CN = a new node ID, OU = `swarm-manager` or `swarm-worker`, O = the cluster
//!   ID; node certificates last 90 days by default, at least an hour
//!   (`DefaultNodeCertExpiration`, `MinNodeCertExpiration`), and are renewed at a random
//!   point between 50 % and 80 % of their life (`calculateRandomExpiry`);
//! * `ca/config.go` `NewClientTLSConfig`: nodes reach managers under the server name
//!   `swarm-manager`, so node certificates carry their role and ID as DNS names.

use std::time::Duration;

use rcgen::{
    BasicConstraints, CertificateParams, CertificateSigningRequestParams, DnType,
    ExtendedKeyUsagePurpose, IsCa, KeyPair, KeyUsagePurpose, SanType, SerialNumber,
};
use sha2::{Digest, Sha256};

/// OU of a manager's certificate.
pub const MANAGER_ROLE: &str = "swarm-manager";
/// OU of a worker's certificate.
pub const WORKER_ROLE: &str = "swarm-worker";
/// CN of the root certificate.
pub const ROOT_CN: &str = "swarm-ca";
/// The root's validity.
pub const ROOT_EXPIRY: Duration = Duration::from_secs(630_720_000);
/// A node certificate's default validity.
pub const DEFAULT_NODE_EXPIRY: Duration = Duration::from_secs(90 * 24 * 3600);
/// The shortest node-certificate validity `swarm update --cert-expiry` accepts.
pub const MIN_NODE_EXPIRY: Duration = Duration::from_secs(3600);

const TOKEN_PREFIX: &str = "SWMTKN";
const DIGEST_DIGITS: usize = 50;
const SECRET_DIGITS: usize = 25;
const SECRET_BYTES: usize = 16;
/// The longest PEM a CSR or certificate may be (a P-256 CSR is under 600 bytes).
pub const MAX_PEM: usize = 16 * 1024;

/// Why a CA operation was refused; each displays as one line.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum CaError {
    /// Not a join token of this format.
    #[error("invalid join token")]
    InvalidToken,
    /// The token matches neither the worker nor the manager token.
    #[error("A valid join token is necessary to join this cluster")]
    WrongToken,
    /// The remote CA is not the one the token names.
    #[error("remote CA does not match fingerprint. Expected: {expected}")]
    Fingerprint {
        /// The digest the token carries, hex.
        expected: String,
    },
    /// A CSR or certificate that does not parse or verify.
    #[error("invalid {what}: {why}")]
    Invalid {
        /// What was being read.
        what: &'static str,
        /// Why it was refused.
        why: String,
    },
    /// The certificate says nothing usable about the node.
    #[error("certificate has no swarm identity: {0}")]
    NoIdentity(String),
}

fn invalid(what: &'static str, e: impl std::fmt::Display) -> CaError {
    CaError::Invalid {
        what,
        why: e.to_string(),
    }
}

/// A node's role, as its certificate's OU says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// `swarm-manager`.
    Manager,
    /// `swarm-worker`.
    Worker,
}

impl Role {
    /// The OU string.
    pub fn ou(self) -> &'static str {
        match self {
            Role::Manager => MANAGER_ROLE,
            Role::Worker => WORKER_ROLE,
        }
    }

    /// `manager` or `worker`, as `node ls` and `swarm join-token` write it.
    pub fn name(self) -> &'static str {
        match self {
            Role::Manager => "manager",
            Role::Worker => "worker",
        }
    }
}

/// The cluster's root CA. Managers hold its key; workers only its certificate.
#[derive(Clone)]
pub struct RootCa {
    cert_pem: String,
    key_pem: Option<String>,
}

impl std::fmt::Debug for RootCa {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RootCa")
            .field("digest", &self.digest_hex())
            .field("has_key", &self.key_pem.is_some())
            .finish()
    }
}

fn offset(t: std::time::SystemTime) -> time::OffsetDateTime {
    time::OffsetDateTime::from(t)
}

/// Fills `buf` from the operating system's CSPRNG (ring's `SystemRandom`: getrandom(2)).
pub fn random_bytes(buf: &mut [u8]) -> Result<(), CaError> {
    use ring::rand::SecureRandom;
    ring::rand::SystemRandom::new()
        .fill(buf)
        .map_err(|_| invalid("randomness", "the system's random source failed"))
}

fn random_serial() -> Result<SerialNumber, CaError> {
    let mut b = [0u8; 16];
    random_bytes(&mut b)?;
    b[0] &= 0x7f; // positive
    Ok(SerialNumber::from_slice(&b))
}

impl RootCa {
    /// A new root: ECDSA P-256, CN `swarm-ca`, valid [`ROOT_EXPIRY`] from `now`.
    pub fn create(now: std::time::SystemTime) -> Result<RootCa, CaError> {
        let key = KeyPair::generate().map_err(|e| invalid("key", e))?;
        let mut p = CertificateParams::default();
        p.distinguished_name = rcgen::DistinguishedName::new();
        p.distinguished_name.push(DnType::CommonName, ROOT_CN);
        p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        p.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        p.not_before = offset(now - Duration::from_secs(3600));
        p.not_after = offset(now + ROOT_EXPIRY);
        p.serial_number = Some(random_serial()?);
        let cert = p.self_signed(&key).map_err(|e| invalid("root", e))?;
        Ok(RootCa {
            cert_pem: cert.pem(),
            key_pem: Some(key.serialize_pem()),
        })
    }

    /// A root from its PEM certificate and, on managers, its PEM key.
    pub fn from_pem(cert_pem: &str, key_pem: Option<&str>) -> Result<RootCa, CaError> {
        if cert_pem.len() > MAX_PEM {
            return Err(invalid("root certificate", "too large"));
        }
        let der = pem_der(cert_pem, "root certificate")?;
        let (_, c) = x509_parser::parse_x509_certificate(&der)
            .map_err(|e| invalid("root certificate", e))?;
        if !c.is_ca() {
            return Err(invalid("root certificate", "not a CA certificate"));
        }
        if let Some(k) = key_pem {
            KeyPair::from_pem(k).map_err(|e| invalid("root key", e))?;
        }
        Ok(RootCa {
            cert_pem: cert_pem.to_owned(),
            key_pem: key_pem.map(str::to_owned),
        })
    }

    /// The certificate, PEM, exactly as hashed into join tokens.
    pub fn cert_pem(&self) -> &str {
        &self.cert_pem
    }

    /// The key, PEM (managers only).
    pub fn key_pem(&self) -> Option<&str> {
        self.key_pem.as_deref()
    }

    /// SHA-256 over the PEM bytes (`NewRootCA`).
    pub fn digest(&self) -> [u8; 32] {
        Sha256::digest(self.cert_pem.as_bytes()).into()
    }

    /// The digest in hex, as SwarmKit's errors print it.
    pub fn digest_hex(&self) -> String {
        self.digest().iter().map(|b| format!("{b:02x}")).collect()
    }

    /// A new join token for this root with a fresh random secret (`GenerateJoinToken`).
    pub fn new_join_token(&self) -> Result<String, CaError> {
        let mut secret = [0u8; SECRET_BYTES];
        random_bytes(&mut secret)?;
        Ok(format!(
            "{TOKEN_PREFIX}-1-{}-{}",
            base36(&self.digest(), DIGEST_DIGITS),
            base36(&secret, SECRET_DIGITS)
        ))
    }

    /// Checks a root fetched from a manager against the token the user typed
    /// (`GetRemoteCA`): the digest over the PEM bytes must be the token's.
    pub fn check_against(&self, token: &ParsedToken) -> Result<(), CaError> {
        if self.digest() == token.root_digest {
            Ok(())
        } else {
            Err(CaError::Fingerprint {
                expected: token
                    .root_digest
                    .iter()
                    .map(|b| format!("{b:02x}"))
                    .collect(),
            })
        }
    }

    /// Signs the key in `csr_pem` for a node: the CSR's subject and extensions are ignored;
    /// the certificate says CN = `node_id`, OU = the role, O = `cluster_id`, with DNS names
    /// for the role and the ID, for both TLS client and server use, valid `expiry` from
    /// `now`. The CSR's own signature must verify (proof of the key).
    pub fn issue(
        &self,
        csr_pem: &str,
        node_id: &str,
        role: Role,
        cluster_id: &str,
        now: std::time::SystemTime,
        expiry: Duration,
    ) -> Result<String, CaError> {
        let key_pem = self
            .key_pem
            .as_deref()
            .ok_or_else(|| invalid("CA", "this node holds no CA key"))?;
        if csr_pem.len() > MAX_PEM {
            return Err(invalid("CSR", "too large"));
        }
        let csr =
            CertificateSigningRequestParams::from_pem(csr_pem).map_err(|e| invalid("CSR", e))?;
        let issuer_key = KeyPair::from_pem(key_pem).map_err(|e| invalid("CA key", e))?;
        let issuer = CertificateParams::from_ca_cert_pem(&self.cert_pem)
            .map_err(|e| invalid("root certificate", e))?
            .self_signed(&issuer_key)
            .map_err(|e| invalid("root certificate", e))?;
        let mut p = CertificateParams::default();
        p.distinguished_name = rcgen::DistinguishedName::new();
        p.distinguished_name.push(DnType::CommonName, node_id);
        p.distinguished_name
            .push(DnType::OrganizationalUnitName, role.ou());
        p.distinguished_name
            .push(DnType::OrganizationName, cluster_id);
        p.subject_alt_names = vec![
            SanType::DnsName(role.ou().try_into().map_err(|e| invalid("name", e))?),
            SanType::DnsName(node_id.try_into().map_err(|e| invalid("node ID", e))?),
        ];
        p.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyEncipherment,
        ];
        p.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        p.use_authority_key_identifier_extension = true;
        p.not_before = offset(now - Duration::from_secs(60));
        p.not_after = offset(now + expiry);
        p.serial_number = Some(random_serial()?);
        let req = CertificateSigningRequestParams {
            params: p,
            public_key: csr.public_key,
        };
        let cert = req
            .signed_by(&issuer, &issuer_key)
            .map_err(|e| invalid("certificate", e))?;
        Ok(cert.pem())
    }
}

/// A node's new key and the CSR for it (PEM both). The subject is irrelevant: the CA sets it.
pub fn new_key_and_csr() -> Result<(String, String), CaError> {
    let key = KeyPair::generate().map_err(|e| invalid("key", e))?;
    let mut p = CertificateParams::default();
    p.distinguished_name = rcgen::DistinguishedName::new();
    p.distinguished_name
        .push(DnType::CommonName, "swarmgate-node");
    let csr = p
        .serialize_request(&key)
        .map_err(|e| invalid("CSR", e))?
        .pem()
        .map_err(|e| invalid("CSR", e))?;
    Ok((key.serialize_pem(), csr))
}

/// What a join token says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParsedToken {
    /// The root certificate's digest.
    pub root_digest: [u8; 32],
}

/// Parses a version-1 join token (`ParseJoinToken`); the secret is only ever compared, by
/// the CA, against the tokens it issued.
pub fn parse_token(token: &str) -> Result<ParsedToken, CaError> {
    let parts: Vec<&str> = token.split('-').collect();
    if parts.len() != 4 || parts[0] != TOKEN_PREFIX || parts[1] != "1" {
        return Err(CaError::InvalidToken);
    }
    if parts[2].len() != DIGEST_DIGITS || parts[3].len() != SECRET_DIGITS {
        return Err(CaError::InvalidToken);
    }
    let digest = unbase36::<32>(parts[2]).ok_or(CaError::InvalidToken)?;
    unbase36::<SECRET_BYTES>(parts[3]).ok_or(CaError::InvalidToken)?;
    Ok(ParsedToken {
        root_digest: digest,
    })
}

/// The role `token` grants, comparing against both in constant time
/// (`IssueNodeCertificate`).
pub fn role_for_token(token: &str, worker: &str, manager: &str) -> Result<Role, CaError> {
    let m = ct_eq(token.as_bytes(), manager.as_bytes());
    let w = ct_eq(token.as_bytes(), worker.as_bytes());
    match (m, w) {
        (true, _) => Ok(Role::Manager),
        (false, true) => Ok(Role::Worker),
        _ => Err(CaError::WrongToken),
    }
}

fn ct_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// The identity a node certificate carries.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeIdentity {
    /// CN.
    pub node_id: String,
    /// OU.
    pub role: Role,
    /// O.
    pub cluster_id: String,
    /// Validity, seconds since the epoch.
    pub not_before: i64,
    /// Expiry, seconds since the epoch.
    pub not_after: i64,
}

/// Reads the identity out of a node certificate (DER). Chain verification is the TLS
/// layer's; this only reads the subject.
pub fn identity(der: &[u8]) -> Result<NodeIdentity, CaError> {
    let (_, c) =
        x509_parser::parse_x509_certificate(der).map_err(|e| CaError::NoIdentity(e.to_string()))?;
    let s = c.subject();
    let one = |it: &mut dyn Iterator<Item = &x509_parser::x509::AttributeTypeAndValue>,
               what: &str|
     -> Result<String, CaError> {
        it.next()
            .and_then(|a| a.as_str().ok())
            .map(str::to_owned)
            .ok_or_else(|| CaError::NoIdentity(format!("no {what}")))
    };
    let node_id = one(&mut s.iter_common_name(), "CN")?;
    let role = match one(&mut s.iter_organizational_unit(), "OU")?.as_str() {
        MANAGER_ROLE => Role::Manager,
        WORKER_ROLE => Role::Worker,
        other => return Err(CaError::NoIdentity(format!("unknown role {other:?}"))),
    };
    let cluster_id = one(&mut s.iter_organization(), "O")?;
    Ok(NodeIdentity {
        node_id,
        role,
        cluster_id,
        not_before: c.validity().not_before.timestamp(),
        not_after: c.validity().not_after.timestamp(),
    })
}

/// Checks a node certificate handed to this node (at join or renewal) before it is kept:
/// signed by `root_pem`'s key, for the key in `key_pem`, valid now. Returns what it says.
pub fn check_node_certificate(
    root_pem: &str,
    cert_pem: &str,
    key_pem: &str,
) -> Result<NodeIdentity, CaError> {
    let root_der = pem_der(root_pem, "root certificate")?;
    let (_, root) = x509_parser::parse_x509_certificate(&root_der)
        .map_err(|e| invalid("root certificate", e))?;
    let der = pem_der(cert_pem, "node certificate")?;
    let (_, c) =
        x509_parser::parse_x509_certificate(&der).map_err(|e| invalid("node certificate", e))?;
    c.verify_signature(Some(root.public_key()))
        .map_err(|_| invalid("node certificate", "not signed by the cluster's root"))?;
    let key = KeyPair::from_pem(key_pem).map_err(|e| invalid("node key", e))?;
    if key.public_key_der() != c.public_key().raw {
        return Err(invalid("node certificate", "not for this node's key"));
    }
    if !c.validity().is_valid() {
        return Err(invalid("node certificate", "not valid now"));
    }
    identity(&der)
}

/// The DER of the first certificate in a PEM string.
pub fn pem_der(pem: &str, what: &'static str) -> Result<Vec<u8>, CaError> {
    let mut r = std::io::BufReader::new(pem.as_bytes());
    let first = rustls_pemfile::certs(&mut r).next();
    match first {
        Some(Ok(c)) => Ok(c.to_vec()),
        Some(Err(e)) => Err(invalid(what, e)),
        None => Err(invalid(what, "no certificate in PEM")),
    }
}

/// When a certificate valid from `not_before` to `not_after` (seconds) should be renewed:
/// a point between 50 % and 80 % of its life, `r` ∈ [0, 1) choosing where
/// (`calculateRandomExpiry`, which spreads renewals so nodes do not all renew at once).
pub fn renewal_time(not_before: i64, not_after: i64, r: f64) -> i64 {
    let life = (not_after - not_before).max(0) as f64;
    not_before + (life * (0.5 + 0.3 * r.clamp(0.0, 1.0))) as i64
}

/// Whether the node certificate `cert_pem` is due for renewal at `now` (seconds since the
/// epoch): its renewal point is drawn between 50 % and 80 % of its life from the
/// certificate's own digest, so it is stable for one certificate and spread across nodes.
/// An unreadable certificate is due.
pub fn renewal_due(cert_pem: &str, now: i64) -> bool {
    let Ok(id) = pem_der(cert_pem, "node certificate").and_then(|d| identity(&d)) else {
        return true;
    };
    let h = Sha256::digest(cert_pem.as_bytes());
    let r = u32::from_be_bytes([h[0], h[1], h[2], h[3]]) as f64 / (u32::MAX as f64 + 1.0);
    now >= renewal_time(id.not_before, id.not_after, r)
}

/// `bytes` as a big-endian number in base 36, 0-padded to `width` (Go's `big.Int.Text(36)`
/// with `%0*s`).
fn base36(bytes: &[u8], width: usize) -> String {
    const DIGITS: &[u8] = b"0123456789abcdefghijklmnopqrstuvwxyz";
    let mut n = bytes.to_vec();
    let mut out = Vec::new();
    while n.iter().any(|b| *b != 0) {
        let mut rem = 0u32;
        for b in n.iter_mut() {
            let cur = (rem << 8) | *b as u32;
            *b = (cur / 36) as u8;
            rem = cur % 36;
        }
        out.push(DIGITS[rem as usize]);
    }
    while out.len() < width {
        out.push(b'0');
    }
    out.reverse();
    String::from_utf8(out).expect("ascii")
}

/// A base-36 number back to `N` big-endian bytes; `None` if it has another character or
/// does not fit.
fn unbase36<const N: usize>(s: &str) -> Option<[u8; N]> {
    let mut n = [0u8; N];
    for c in s.bytes() {
        let d = match c {
            b'0'..=b'9' => c - b'0',
            b'a'..=b'z' => c - b'a' + 10,
            _ => return None,
        } as u32;
        let mut carry = d;
        for b in n.iter_mut().rev() {
            let cur = *b as u32 * 36 + carry;
            *b = cur as u8;
            carry = cur >> 8;
        }
        if carry != 0 {
            return None;
        }
    }
    Some(n)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::SystemTime;

    #[test]
    fn base36_round_trips_and_pads() {
        assert_eq!(base36(&[0], 5), "00000");
        assert_eq!(base36(&[1, 0], 0), "74"); // 256 = 7*36 + 4
        assert_eq!(unbase36::<2>("74"), Some([1, 0]));
        assert_eq!(unbase36::<1>("74"), None); // 256 does not fit a byte
        assert_eq!(unbase36::<2>("7-"), None);
        let d = [0xffu8; 32];
        let s = base36(&d, 50);
        assert_eq!(s.len(), 50, "2^256 - 1 fits 50 base-36 digits");
        assert_eq!(unbase36::<32>(&s), Some(d));
    }

    /// A token from SwarmKit's own API documentation (moby's swagger example,
    /// `SWMTKN-1-1h8aps2yszaiqmz2l3oc5392pgk8e49qhx2aj3nyv0ui0hez2a-6qmn92w6bu3jdvnglku58u11a`)
    /// parses, and its digest converts back to the same digits.
    #[test]
    fn parses_a_token_docker_generated() {
        let t =
            "SWMTKN-1-1h8aps2yszaiqmz2l3oc5392pgk8e49qhx2aj3nyv0ui0hez2a-6qmn92w6bu3jdvnglku58u11a";
        let p = parse_token(t).unwrap();
        assert_eq!(
            base36(&p.root_digest, 50),
            "1h8aps2yszaiqmz2l3oc5392pgk8e49qhx2aj3nyv0ui0hez2a"
        );
    }

    #[test]
    fn malformed_tokens_are_one_error() {
        let good = RootCa::create(SystemTime::now())
            .unwrap()
            .new_join_token()
            .unwrap();
        assert!(parse_token(&good).is_ok());
        for bad in [
            "",
            "SWMTKN",
            &good.replacen("SWMTKN", "SWMTKM", 1),
            &good.replacen("-1-", "-2-", 1),
            &good[..good.len() - 1],
            &format!("{good}0"),
            &good.to_uppercase(),
            &format!("{good}-x"),
            "SWMTKN-1-zzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzz-0000000000000000000000000",
        ] {
            assert_eq!(parse_token(bad), Err(CaError::InvalidToken), "{bad:?}");
        }
    }

    #[test]
    fn token_pins_the_root_and_grants_its_role() {
        let ca = RootCa::create(SystemTime::now()).unwrap();
        let other = RootCa::create(SystemTime::now()).unwrap();
        let (w, m) = (ca.new_join_token().unwrap(), ca.new_join_token().unwrap());
        assert_ne!(w, m, "different secrets");
        assert_eq!(w.len(), "SWMTKN-1-".len() + 50 + 1 + 25);
        let p = parse_token(&w).unwrap();
        ca.check_against(&p).unwrap();
        assert!(matches!(
            other.check_against(&p),
            Err(CaError::Fingerprint { .. })
        ));
        assert_eq!(role_for_token(&w, &w, &m), Ok(Role::Worker));
        assert_eq!(role_for_token(&m, &w, &m), Ok(Role::Manager));
        let rotated = ca.new_join_token().unwrap();
        assert_eq!(role_for_token(&rotated, &w, &m), Err(CaError::WrongToken));
        // The digest is over the PEM text, computed here independently of `digest()`.
        let hex: String = Sha256::digest(ca.cert_pem().as_bytes())
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        assert_eq!(ca.digest_hex(), hex);
    }

    #[test]
    fn the_ca_sets_the_subject_whatever_the_csr_asks() {
        let now = SystemTime::now();
        let ca = RootCa::create(now).unwrap();
        let (_key, csr) = new_key_and_csr().unwrap();
        let pem = ca
            .issue(
                &csr,
                "abcdefghijklmnopqrstuvwxy",
                Role::Worker,
                "clusterid0123456789abcdefg",
                now,
                DEFAULT_NODE_EXPIRY,
            )
            .unwrap();
        let id = identity(&pem_der(&pem, "cert").unwrap()).unwrap();
        assert_eq!(id.node_id, "abcdefghijklmnopqrstuvwxy");
        assert_eq!(id.role, Role::Worker);
        assert_eq!(id.cluster_id, "clusterid0123456789abcdefg");
        let life = id.not_after - id.not_before;
        assert_eq!(life, DEFAULT_NODE_EXPIRY.as_secs() as i64 + 60);
        // A worker-only root (no key) cannot sign; a garbled CSR is one clear error.
        let public = RootCa::from_pem(ca.cert_pem(), None).unwrap();
        assert!(public
            .issue(&csr, "n", Role::Worker, "c", now, DEFAULT_NODE_EXPIRY)
            .is_err());
        let garbled = csr.replace('A', "B");
        let e = ca
            .issue(&garbled, "n", Role::Worker, "c", now, DEFAULT_NODE_EXPIRY)
            .unwrap_err();
        assert!(e.to_string().starts_with("invalid CSR"), "{e}");
        assert!(!e.to_string().contains('\n'));
    }

    #[test]
    fn a_certificate_is_due_for_renewal_between_half_and_four_fifths_of_its_life() {
        let now = SystemTime::now();
        let ca = RootCa::create(now).unwrap();
        let (_k, csr) = new_key_and_csr().unwrap();
        let life = Duration::from_secs(10_000);
        let pem = ca.issue(&csr, "n1", Role::Worker, "c1", now, life).unwrap();
        let id = identity(&pem_der(&pem, "c").unwrap()).unwrap();
        let t = |f: f64| id.not_before + ((id.not_after - id.not_before) as f64 * f) as i64;
        assert!(!renewal_due(&pem, t(0.49)));
        assert!(renewal_due(&pem, t(0.81)));
        assert!(renewal_due("garbage", 0));
    }

    /// A certificate handed to a node is kept only if the cluster's root signed it, for
    /// the node's own key.
    #[test]
    fn a_node_checks_the_certificate_it_is_given() {
        let now = SystemTime::now();
        let ca = RootCa::create(now).unwrap();
        let other = RootCa::create(now).unwrap();
        let (key, csr) = new_key_and_csr().unwrap();
        let (other_key, _) = new_key_and_csr().unwrap();
        let cert = ca
            .issue(&csr, "n1", Role::Worker, "c1", now, DEFAULT_NODE_EXPIRY)
            .unwrap();
        let id = check_node_certificate(ca.cert_pem(), &cert, &key).unwrap();
        assert_eq!((id.node_id.as_str(), id.role), ("n1", Role::Worker));
        let e = check_node_certificate(other.cert_pem(), &cert, &key).unwrap_err();
        assert!(
            e.to_string().contains("not signed by the cluster's root"),
            "{e}"
        );
        let e = check_node_certificate(ca.cert_pem(), &cert, &other_key).unwrap_err();
        assert!(e.to_string().contains("not for this node's key"), "{e}");
    }

    #[test]
    fn renewal_falls_between_half_and_four_fifths_of_the_life() {
        assert_eq!(renewal_time(1000, 2000, 0.0), 1500);
        assert_eq!(renewal_time(1000, 2000, 0.999_999), 1799);
        assert_eq!(renewal_time(1000, 2000, 7.0), 1800);
    }
}
