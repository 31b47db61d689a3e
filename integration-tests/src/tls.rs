//! Test certificates generated at run time with `rcgen`: a CA and a server
//! certificate for `127.0.0.1` / `localhost` / `::1` signed by it, written to a
//! temporary directory that is bind-mounted into TLS containers.

use std::path::{Path, PathBuf};

use anyhow::Context as _;
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose,
};

/// Installs rustls's `ring` crypto provider as the process default (needed
/// by the `redis` crate's rustls TLS). Safe to call any number of times.
pub fn install_crypto_provider() {
    // Err means a provider is already installed, which is fine.
    let _ = rustls::crypto::ring::default_provider().install_default();
}

fn new_ca(common_name: &str) -> anyhow::Result<(CertificateParams, KeyPair, String)> {
    let mut params = CertificateParams::new(Vec::<String>::new()).context("CA params")?;
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, common_name);
    dn.push(DnType::OrganizationName, "kvmap integration tests");
    params.distinguished_name = dn;
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    let key = KeyPair::generate().context("CA key")?;
    let cert = params.self_signed(&key).context("self-sign CA")?;
    Ok((params, key, cert.pem()))
}

/// A CA that has signed nothing the harness uses: clients trusting only this
/// CA must fail the TLS handshake (negative tests).
pub fn wrong_ca_pem() -> anyhow::Result<String> {
    Ok(new_ca("kvmap wrong test CA")?.2)
}

/// A CA plus a server certificate/key signed by it, stored as PEM files in a
/// temporary directory (removed on drop):
/// `ca.crt`, `server.crt`, `server.key`.
#[derive(Debug)]
pub struct TlsMaterial {
    dir: tempfile::TempDir,
    ca_pem: String,
    cert_pem: String,
    key_pem: String,
}

impl TlsMaterial {
    /// File name of the CA certificate in [`TlsMaterial::dir`].
    pub const CA_FILE: &'static str = "ca.crt";
    /// File name of the server certificate.
    pub const CERT_FILE: &'static str = "server.crt";
    /// File name of the server private key.
    pub const KEY_FILE: &'static str = "server.key";

    /// Generates a fresh CA and a server certificate valid for `127.0.0.1`,
    /// `localhost` and `::1`, and writes them to a new temporary directory.
    pub fn generate() -> anyhow::Result<Self> {
        let (ca_params, ca_key, ca_pem) = new_ca("kvmap test CA")?;
        let issuer = Issuer::new(ca_params, ca_key);

        let mut params = CertificateParams::new(vec![
            "127.0.0.1".to_string(),
            "localhost".to_string(),
            "::1".to_string(),
        ])
        .context("server cert params")?;
        params
            .distinguished_name
            .push(DnType::CommonName, "kvmap test server");
        params.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyEncipherment,
        ];
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        let key = KeyPair::generate().context("server key")?;
        let cert = params
            .signed_by(&key, &issuer)
            .context("sign server cert")?;
        let (cert_pem, key_pem) = (cert.pem(), key.serialize_pem());

        let dir = tempfile::Builder::new()
            .prefix("kvmap-tls-")
            .tempdir()
            .context("create temp dir for TLS material")?;
        for (name, pem) in [
            (Self::CA_FILE, &ca_pem),
            (Self::CERT_FILE, &cert_pem),
            (Self::KEY_FILE, &key_pem),
        ] {
            std::fs::write(dir.path().join(name), pem).with_context(|| format!("write {name}"))?;
        }
        Ok(Self {
            dir,
            ca_pem,
            cert_pem,
            key_pem,
        })
    }

    /// Directory holding the PEM files.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// Path of the CA certificate file.
    pub fn ca_path(&self) -> PathBuf {
        self.dir.path().join(Self::CA_FILE)
    }

    /// CA certificate (PEM): what clients must trust.
    pub fn ca_pem(&self) -> &str {
        &self.ca_pem
    }

    /// Server certificate (PEM).
    pub fn cert_pem(&self) -> &str {
        &self.cert_pem
    }

    /// Server private key (PEM, PKCS#8).
    pub fn key_pem(&self) -> &str {
        &self.key_pem
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generates_distinct_pem_files() {
        let m = TlsMaterial::generate().expect("generate");
        assert!(m.ca_pem().starts_with("-----BEGIN CERTIFICATE-----"));
        assert!(m.key_pem().contains("PRIVATE KEY"));
        assert!(m.ca_path().exists());
        assert_ne!(wrong_ca_pem().expect("wrong CA"), m.ca_pem());
    }
}
