//! TLS for the HTTP server: a rustls `ServerConfig` from the `tls_server_config` of the web
//! configuration file (exporter-toolkit's names and client authentication policies).

use std::sync::Arc;

use rustls::crypto::WebPkiSupportedAlgorithms;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, UnixTime};
use rustls::server::WebPkiClientVerifier;
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::{
    DigitallySignedStruct, DistinguishedName, RootCertStore, ServerConfig, SignatureScheme,
};

/// exporter-toolkit's `client_auth_type` values (Go's `tls.ClientAuthType`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Deserialize)]
pub enum ClientAuthType {
    /// No client certificate is asked for.
    #[default]
    NoClientCert,
    /// A certificate is asked for, not required, not verified.
    RequestClientCert,
    /// A certificate is required, not verified (insecure; exporter-toolkit has it too).
    RequireAnyClientCert,
    /// A certificate is optional; when given it must chain to `client_ca_file`.
    VerifyClientCertIfGiven,
    /// A certificate is required and must chain to `client_ca_file`: mutual TLS.
    RequireAndVerifyClientCert,
}

/// `min_version` / `max_version` values. rustls speaks TLS 1.2 and 1.3 only.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, serde::Deserialize)]
pub enum TlsVersion {
    TLS10,
    TLS11,
    TLS12,
    TLS13,
}

/// PEM material and policy, already read from files (or given inline).
pub struct TlsMaterial {
    pub cert_pem: Vec<u8>,
    pub key_pem: Vec<u8>,
    pub client_ca_pem: Option<Vec<u8>>,
    pub client_auth: ClientAuthType,
    pub min_version: TlsVersion,
    pub max_version: TlsVersion,
}

/// Builds the server's TLS configuration. Errors name the setting (`cert_file`, ...) and say
/// what to fix; the caller adds the file name.
pub fn server_config(material: &TlsMaterial) -> Result<Arc<ServerConfig>, String> {
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(&material.cert_pem)
        .collect::<Result<_, _>>()
        .map_err(|e| format!("cert_file: not a PEM certificate chain ({e})"))?;
    if certs.is_empty() {
        return Err("cert_file: no PEM certificate in it".to_owned());
    }
    let key = PrivateKeyDer::from_pem_slice(&material.key_pem)
        .map_err(|e| format!("key_file: not a PEM private key ({e})"))?;

    for (name, version) in [
        ("min_version", material.min_version),
        ("max_version", material.max_version),
    ] {
        if version < TlsVersion::TLS12 {
            return Err(format!(
                "{name}: {version:?} is not supported (TLS 1.0 and 1.1 are obsolete); use TLS12 or TLS13"
            ));
        }
    }
    if material.min_version > material.max_version {
        return Err(format!(
            "min_version {:?} is above max_version {:?}",
            material.min_version, material.max_version
        ));
    }
    let versions: Vec<&'static rustls::SupportedProtocolVersion> = [
        (TlsVersion::TLS12, &rustls::version::TLS12),
        (TlsVersion::TLS13, &rustls::version::TLS13),
    ]
    .into_iter()
    .filter(|(v, _)| (material.min_version..=material.max_version).contains(v))
    .map(|(_, p)| p)
    .collect();

    let verifier: Arc<dyn ClientCertVerifier> = match material.client_auth {
        ClientAuthType::NoClientCert => {
            if material.client_ca_pem.is_some() {
                return Err(
                    "client_ca_file is set but client_auth_type is NoClientCert; set client_auth_type: RequireAndVerifyClientCert for mutual TLS"
                        .to_owned(),
                );
            }
            WebPkiClientVerifier::no_client_auth()
        }
        auth @ (ClientAuthType::RequestClientCert | ClientAuthType::RequireAnyClientCert) => {
            Arc::new(AnyClientCert {
                mandatory: auth == ClientAuthType::RequireAnyClientCert,
                algorithms: provider.signature_verification_algorithms,
            })
        }
        auth @ (ClientAuthType::VerifyClientCertIfGiven
        | ClientAuthType::RequireAndVerifyClientCert) => {
            let ca_pem = material.client_ca_pem.as_ref().ok_or_else(|| {
                format!(
                    "client_auth_type {auth:?} needs client_ca_file (the CA that signs client certificates)"
                )
            })?;
            let mut roots = RootCertStore::empty();
            for cert in CertificateDer::pem_slice_iter(ca_pem) {
                let cert =
                    cert.map_err(|e| format!("client_ca_file: not a PEM certificate ({e})"))?;
                roots
                    .add(cert)
                    .map_err(|e| format!("client_ca_file: unusable CA certificate ({e})"))?;
            }
            if roots.is_empty() {
                return Err("client_ca_file: no PEM certificate in it".to_owned());
            }
            let builder =
                WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider.clone());
            let builder = if auth == ClientAuthType::VerifyClientCertIfGiven {
                builder.allow_unauthenticated()
            } else {
                builder
            };
            builder
                .build()
                .map_err(|e| format!("client_ca_file: {e}"))?
        }
    };

    let mut config = ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&versions)
        .map_err(|e| format!("min_version/max_version: {e}"))?
        .with_client_cert_verifier(verifier)
        .with_single_cert(certs, key)
        .map_err(|e| format!("cert_file/key_file: the key does not fit the certificate ({e})"))?;
    // HTTP/1.1 only: the server speaks no HTTP/2.
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// `RequestClientCert` / `RequireAnyClientCert`: any certificate is accepted, but the client
/// must still prove it holds the certificate's key.
#[derive(Debug)]
struct AnyClientCert {
    mandatory: bool,
    algorithms: WebPkiSupportedAlgorithms,
}

impl ClientCertVerifier for AnyClientCert {
    fn offer_client_auth(&self) -> bool {
        true
    }

    fn client_auth_mandatory(&self) -> bool {
        self.mandatory
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        &[]
    }

    fn verify_client_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        Ok(ClientCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algorithms.supported_schemes()
    }
}
