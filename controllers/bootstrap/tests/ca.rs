//! The CA pinning hash equals what kubeadm's documentation computes with openssl.

use std::process::Command;

use capwin_bootstrap::ca::{CaError, ca_cert_hashes};

fn openssl_hash(pem: &[u8], dir: &std::path::Path) -> String {
    let crt = dir.join("ca.crt");
    std::fs::write(&crt, pem).unwrap();
    // openssl x509 -pubkey -in ca.crt | openssl pkey -pubin -outform der | sha256sum
    let pubkey = Command::new("openssl")
        .args(["x509", "-pubkey", "-noout", "-in"])
        .arg(&crt)
        .output()
        .expect("openssl is installed");
    assert!(pubkey.status.success());
    let pk = dir.join("pub.pem");
    std::fs::write(&pk, pubkey.stdout).unwrap();
    let der = Command::new("openssl").args(["pkey", "-pubin", "-outform", "der", "-in"]).arg(&pk).output().unwrap();
    assert!(der.status.success());
    use sha2::Digest;
    format!("sha256:{:x}", sha2::Sha256::digest(der.stdout))
}

#[test]
fn matches_openssl_for_rsa_ec_and_generated_cas() {
    let dir = std::env::temp_dir().join(format!("capwin-ca-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let mut bundle = Vec::new();
    let mut expected = Vec::new();
    for (i, key) in [vec!["-newkey", "rsa:2048"], vec!["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256"]]
        .into_iter()
        .enumerate()
    {
        let crt = dir.join(format!("c{i}.crt"));
        let status = Command::new("openssl")
            .args(["req", "-x509", "-nodes", "-days", "1", "-subj", "/CN=kubernetes"])
            .args(&key)
            .arg("-keyout")
            .arg(dir.join(format!("c{i}.key")))
            .arg("-out")
            .arg(&crt)
            .output()
            .unwrap();
        assert!(status.status.success(), "{}", String::from_utf8_lossy(&status.stderr));
        let pem = std::fs::read(&crt).unwrap();
        let want = openssl_hash(&pem, &dir);
        assert_eq!(ca_cert_hashes(&pem).unwrap(), vec![want.clone()]);
        bundle.extend_from_slice(&pem);
        expected.push(want);
    }
    assert_eq!(ca_cert_hashes(&bundle).unwrap(), expected, "every certificate of a bundle, in order");
    let (generated, _) = capwin_testkit::capi::self_signed_ca("demo").unwrap();
    assert_eq!(ca_cert_hashes(generated.as_bytes()).unwrap(), vec![openssl_hash(generated.as_bytes(), &dir)]);
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn malformed_input_is_an_error_without_panicking() {
    assert_eq!(ca_cert_hashes(b"nothing here"), Err(CaError::NoCertificate));
    assert_eq!(
        ca_cert_hashes(b"-----BEGIN CERTIFICATE-----\n!!!\n-----END CERTIFICATE-----\n"),
        Err(CaError::BadBase64)
    );
    assert!(matches!(
        ca_cert_hashes(b"-----BEGIN CERTIFICATE-----\nMAMCAQE=\n-----END CERTIFICATE-----\n"),
        Err(CaError::BadDer(_))
    ));
    assert!(matches!(ca_cert_hashes(b"-----BEGIN CERTIFICATE-----\nMIIBIjAN\n"), Err(CaError::BadDer(_))));
}
