//! The QUIC endpoint's certificate: the configured PEM files, or a self-signed certificate for
//! `localhost`, `127.0.0.1` and `::1` made under `$DATA/tls` on first start and reused after.
//! Clients pin it by its SHA-256 fingerprint (printed at start).

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use sha2::{Digest, Sha256};

use super::Error;

/// A certificate chain and its key.
#[derive(Debug)]
pub struct Identity {
    /// Leaf first.
    pub chain: Vec<CertificateDer<'static>>,
    /// The leaf's private key.
    pub key: PrivateKeyDer<'static>,
    /// Where it came from, for logs.
    pub source: PathBuf,
}

impl Identity {
    /// SHA-256 of the leaf certificate (DER), lowercase hex.
    pub fn fingerprint(&self) -> String {
        self.chain
            .first()
            .map(|c| hex::encode(Sha256::digest(c.as_ref())))
            .unwrap_or_default()
    }
}

/// Paths of the self-signed development certificate.
pub fn dev_paths(data_dir: &Path) -> (PathBuf, PathBuf) {
    let dir = data_dir.join("tls");
    (dir.join("cert.pem"), dir.join("key.pem"))
}

/// Loads a PEM chain and key.
pub fn load(cert: &Path, key: &Path) -> Result<Identity, Error> {
    let chain = CertificateDer::pem_file_iter(cert)
        .and_then(|it| it.collect::<Result<Vec<_>, _>>())
        .map_err(|e| Error::Tls(format!("certificate {}: {e}", cert.display())))?;
    if chain.is_empty() {
        return Err(Error::Tls(format!(
            "certificate {} holds no certificate",
            cert.display()
        )));
    }
    let key_der = PrivateKeyDer::from_pem_file(key)
        .map_err(|e| Error::Tls(format!("private key {}: {e}", key.display())))?;
    Ok(Identity {
        chain,
        key: key_der,
        source: cert.to_path_buf(),
    })
}

/// The self-signed certificate under `$DATA/tls`, created on first use.
pub fn ensure_self_signed(data_dir: &Path) -> Result<Identity, Error> {
    let (cert, key) = dev_paths(data_dir);
    if cert.exists() && key.exists() {
        return load(&cert, &key);
    }
    let made = rcgen::generate_simple_self_signed(vec![
        "localhost".to_string(),
        "127.0.0.1".to_string(),
        "::1".to_string(),
    ])
    .map_err(|e| Error::Tls(format!("cannot make a self-signed certificate: {e}")))?;
    crate::fsutil::write_private(&key, made.signing_key.serialize_pem().as_bytes(), 0o600)
        .map_err(|e| Error::Tls(format!("cannot write {}: {e}", key.display())))?;
    crate::fsutil::write_private(&cert, made.cert.pem().as_bytes(), 0o644)
        .map_err(|e| Error::Tls(format!("cannot write {}: {e}", cert.display())))?;
    tracing::info!(path = %cert.display(), "created a self-signed certificate for QUIC");
    load(&cert, &key)
}

/// The crypto provider used everywhere (aws-lc-rs, which aws-sdk-s3 also uses).
pub fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::aws_lc_rs::default_provider())
}

/// A TLS 1.3 server config offering ALPN `h3`.
pub fn server_config(identity: &Identity) -> Result<rustls::ServerConfig, Error> {
    let mut cfg = rustls::ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| Error::Tls(e.to_string()))?
        .with_no_client_auth()
        .with_single_cert(identity.chain.clone(), identity.key.clone_key())
        .map_err(|e| Error::Tls(format!("{}: {e}", identity.source.display())))?;
    cfg.alpn_protocols = vec![b"h3".to_vec()];
    Ok(cfg)
}

/// Trusts exactly one server certificate, named by the SHA-256 of its DER encoding — how a
/// client trusts a development server's self-signed certificate without turning verification
/// off. Handshake signatures are still checked against that certificate's key.
#[derive(Debug)]
pub struct PinnedVerifier {
    sha256: [u8; 32],
    provider: Arc<rustls::crypto::CryptoProvider>,
}

impl PinnedVerifier {
    /// Parses a fingerprint in hex (colons and case ignored).
    pub fn new(fingerprint_hex: &str) -> Result<PinnedVerifier, Error> {
        let clean: String = fingerprint_hex
            .chars()
            .filter(|c| *c != ':' && !c.is_whitespace())
            .collect();
        let bytes = hex::decode(&clean).map_err(|_| {
            Error::Tls(format!(
                "certificate fingerprint {fingerprint_hex:?} is not hex"
            ))
        })?;
        let sha256: [u8; 32] = bytes.try_into().map_err(|_| {
            Error::Tls(format!(
                "certificate fingerprint {fingerprint_hex:?} is not a SHA-256 (64 hex digits)"
            ))
        })?;
        Ok(PinnedVerifier {
            sha256,
            provider: provider(),
        })
    }
}

impl rustls::client::danger::ServerCertVerifier for PinnedVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &rustls::pki_types::ServerName<'_>,
        _ocsp: &[u8],
        _now: rustls::pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        let got: [u8; 32] = Sha256::digest(end_entity.as_ref()).into();
        if got == self.sha256 {
            Ok(rustls::client::danger::ServerCertVerified::assertion())
        } else {
            Err(rustls::Error::General(format!(
                "server certificate SHA-256 {} does not match the pinned {}",
                hex::encode(got),
                hex::encode(self.sha256)
            )))
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

/// How a client decides to trust the server.
#[derive(Debug, Clone)]
pub enum Trust {
    /// Exactly the certificate with this SHA-256 (hex).
    Pinned(String),
    /// Certificates issued by the CAs in this PEM file.
    CaFile(PathBuf),
}

/// A TLS 1.3 client config for HTTP/3 (ALPN `h3`). Verification is never off: either a pinned
/// certificate or a CA file.
pub fn client_config(trust: &Trust) -> Result<rustls::ClientConfig, Error> {
    let builder = rustls::ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| Error::Tls(e.to_string()))?;
    let mut cfg = match trust {
        Trust::Pinned(fp) => builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(PinnedVerifier::new(fp)?))
            .with_no_client_auth(),
        Trust::CaFile(path) => {
            let mut roots = rustls::RootCertStore::empty();
            let certs = CertificateDer::pem_file_iter(path)
                .and_then(|it| it.collect::<Result<Vec<_>, _>>())
                .map_err(|e| Error::Tls(format!("CA file {}: {e}", path.display())))?;
            for c in certs {
                roots
                    .add(c)
                    .map_err(|e| Error::Tls(format!("CA file {}: {e}", path.display())))?;
            }
            builder.with_root_certificates(roots).with_no_client_auth()
        }
    };
    cfg.alpn_protocols = vec![b"h3".to_vec()];
    Ok(cfg)
}
