//! Certificates and keys of a test control plane: a CA, the API server's
//! serving certificate (a leaf signed by that CA: rustls refuses a
//! self-signed CA certificate as a server certificate) and the key that
//! signs and verifies ServiceAccount tokens.

use std::path::{Path, PathBuf};

use anyhow::Context;
use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair};

/// The files the control plane reads, written into one directory.
#[derive(Debug, Clone)]
pub struct Pki {
    /// The CA certificate (PEM): what clients trust.
    pub ca_cert: PathBuf,
    /// The CA certificate's PEM text.
    pub ca_pem: String,
    /// The API server's serving certificate.
    pub serving_cert: PathBuf,
    /// Its key.
    pub serving_key: PathBuf,
    /// The ServiceAccount token signing key (PKCS#8 ECDSA P-256).
    pub sa_key: PathBuf,
    /// Its public key, with which the API server verifies tokens.
    pub sa_pub: PathBuf,
}

impl Pki {
    /// Writes a fresh CA, a serving certificate for `names` (DNS names or
    /// IP addresses) and a ServiceAccount key into `dir`.
    pub fn generate(dir: &Path, names: &[String]) -> anyhow::Result<Pki> {
        let mut ca_params = CertificateParams::new(Vec::<String>::new())?;
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca_params
            .distinguished_name
            .push(DnType::CommonName, "sluice-test-kubernetes-ca");
        let ca_key = KeyPair::generate()?;
        let ca_cert = ca_params.self_signed(&ca_key)?;
        let issuer = Issuer::new(ca_params, ca_key);

        let mut leaf = CertificateParams::new(names.to_vec())?;
        leaf.distinguished_name
            .push(DnType::CommonName, "kube-apiserver");
        let leaf_key = KeyPair::generate()?;
        let leaf_cert = leaf.signed_by(&leaf_key, &issuer)?;

        let sa_key = KeyPair::generate()?;

        let pki = Pki {
            ca_cert: dir.join("ca.crt"),
            ca_pem: ca_cert.pem(),
            serving_cert: dir.join("apiserver.crt"),
            serving_key: dir.join("apiserver.key"),
            sa_key: dir.join("sa.key"),
            sa_pub: dir.join("sa.pub"),
        };
        let write = |path: &Path, text: String| {
            std::fs::write(path, text).with_context(|| format!("cannot write {}", path.display()))
        };
        write(&pki.ca_cert, ca_cert.pem())?;
        write(&pki.serving_cert, leaf_cert.pem())?;
        write(&pki.serving_key, leaf_key.serialize_pem())?;
        write(&pki.sa_key, sa_key.serialize_pem())?;
        write(&pki.sa_pub, sa_key.public_key_pem())?;
        Ok(pki)
    }
}
