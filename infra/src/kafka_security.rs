//! Turns the Kafka security flags into the settings both Kafka clients take: one
//! [`kafka_group::Security`] (a rustls config and SASL credentials) that the group layer uses
//! as it is and rskafka's `ClientBuilder` gets through [`secure`]. Files are read once, at
//! start-up, so a missing or malformed file stops the process with its path.

use std::{path::Path, sync::Arc};

use kafka_group::{
    rustls::{
        self,
        pki_types::{pem::PemObject, CertificateDer, PrivateKeyDer},
        RootCertStore,
    },
    Mismatch, SaslCredentials, SaslMechanism, Security,
};
use rskafka::client::{ClientBuilder, Credentials, SaslConfig};
use secrecy::{ExposeSecret, SecretString};

use crate::config::{KafkaSecurityArgs, SaslMechanismArg};

#[derive(Debug, thiserror::Error)]
pub enum KafkaSecurityError {
    #[error("--kafka-sasl-mechanism {0} needs a password: set --kafka-sasl-password-file (or --kafka-sasl-password / KAFKA_SASL_PASSWORD)")]
    MissingPassword(&'static str),
    #[error("{flag} is set but TLS is off: add --kafka-tls (KAFKA_TLS=true), so that certificates are never given to a plaintext connection")]
    TlsFileWithoutTls { flag: &'static str },
    #[error("cannot read {what} {path}: {cause}")]
    File {
        what: &'static str,
        path: String,
        cause: String,
    },
    #[error("the client certificate or key is not usable: {0}")]
    ClientCertificate(String),
}

/// The security the flags describe; plaintext and unauthenticated when none is set.
pub fn resolve(args: &KafkaSecurityArgs) -> Result<Security, KafkaSecurityError> {
    let sasl = match (args.sasl_mechanism, &args.sasl_username) {
        (Some(mechanism), Some(username)) => Some(SaslCredentials {
            mechanism: mechanism.into(),
            username: username.clone(),
            password: password(args, mechanism)?,
        }),
        // clap makes the two flags require each other.
        _ => None,
    };
    let tls = tls_config(args)?.map(Arc::new);
    if matches!(&sasl, Some(s) if s.mechanism == SaslMechanism::Plain) && tls.is_none() {
        tracing::warn!(
            "Kafka SASL PLAIN without --kafka-tls: the password crosses the network in clear text"
        );
    }
    Ok(Security { tls, sasl })
}

/// Applies the same TLS and SASL settings to an rskafka client.
pub fn secure(mut builder: ClientBuilder, security: &Security) -> ClientBuilder {
    if let Some(tls) = &security.tls {
        builder = builder.tls_config(Arc::clone(tls));
    }
    if let Some(sasl) = &security.sasl {
        let credentials = Credentials::new(
            sasl.username.clone(),
            sasl.password.expose_secret().to_string(),
        );
        builder = builder.sasl_config(match sasl.mechanism {
            SaslMechanism::Plain => SaslConfig::Plain(credentials),
            SaslMechanism::ScramSha256 => SaslConfig::ScramSha256(credentials),
            SaslMechanism::ScramSha512 => SaslConfig::ScramSha512(credentials),
        });
    }
    builder
}

/// What a Kafka error says, and for settings the broker's listener does not speak, which
/// flags to change (kafka-group's own wording knows no flags).
pub fn explain(error: &kafka_group::Error) -> String {
    match error.mismatch() {
        Some((address, mismatch)) => explain_mismatch(address, mismatch),
        None => error.to_string(),
    }
}

fn explain_mismatch(address: &str, mismatch: &Mismatch) -> String {
    let broker = format!("the broker at {address}");
    match mismatch {
        Mismatch::TlsExpected => format!(
            "{broker} expects TLS: add --kafka-tls (KAFKA_TLS=true), and --kafka-tls-ca-file \
             (KAFKA_TLS_CA_FILE) unless a public CA signed its certificate"
        ),
        Mismatch::TlsNotSpoken => format!(
            "{broker} does not speak TLS on this port (it answered in plaintext): drop \
             --kafka-tls (KAFKA_TLS=false) or use its TLS port"
        ),
        Mismatch::SaslExpected { offered } => format!(
            "{broker} expects SASL authentication (it offers {}): set --kafka-sasl-mechanism \
             (KAFKA_SASL_MECHANISM), --kafka-sasl-username (KAFKA_SASL_USERNAME) and \
             --kafka-sasl-password-file (KAFKA_SASL_PASSWORD_FILE){}",
            offered.join(", "),
            unspoken(offered)
        ),
        Mismatch::SaslNotEnabled => format!(
            "{broker} does not use SASL authentication on this port: drop \
             --kafka-sasl-mechanism and --kafka-sasl-username (KAFKA_SASL_MECHANISM, \
             KAFKA_SASL_USERNAME) or use its SASL port"
        ),
        Mismatch::MechanismNotOffered { mechanism, offered } => format!(
            "{broker} does not offer SASL mechanism {mechanism} (it offers: {}): set \
             --kafka-sasl-mechanism (KAFKA_SASL_MECHANISM) to one of those{}",
            offered.join(", "),
            unspoken(offered)
        ),
    }
}

/// A note when none of the mechanisms a broker offers is one this client speaks.
fn unspoken(offered: &[String]) -> String {
    let ours = SaslMechanism::ALL.map(SaslMechanism::name);
    if offered.iter().any(|m| ours.contains(&m.as_str())) {
        String::new()
    } else {
        format!(
            "; this client speaks only {}, so the broker needs one of them enabled",
            ours.join(", ")
        )
    }
}

/// A one-line description for the start-up log (never the password).
pub fn describe(security: &Security) -> String {
    let transport = match &security.tls {
        Some(_) => "TLS",
        None => "plaintext",
    };
    match &security.sasl {
        Some(sasl) => format!(
            "{transport}, SASL {} as {:?}",
            sasl.mechanism, sasl.username
        ),
        None => format!("{transport}, no SASL"),
    }
}

impl From<SaslMechanismArg> for SaslMechanism {
    fn from(arg: SaslMechanismArg) -> Self {
        match arg {
            SaslMechanismArg::Plain => SaslMechanism::Plain,
            SaslMechanismArg::ScramSha256 => SaslMechanism::ScramSha256,
            SaslMechanismArg::ScramSha512 => SaslMechanism::ScramSha512,
        }
    }
}

fn password(
    args: &KafkaSecurityArgs,
    mechanism: SaslMechanismArg,
) -> Result<SecretString, KafkaSecurityError> {
    if let Some(path) = &args.sasl_password_file {
        let text = read_file("SASL password file", path)?;
        let text = String::from_utf8(text).map_err(|_| KafkaSecurityError::File {
            what: "SASL password file",
            path: path.display().to_string(),
            cause: "not UTF-8 text".into(),
        })?;
        // A Secret written with `echo` or an editor ends in a newline that is not part of it.
        let password = text
            .strip_suffix('\n')
            .map(|t| t.strip_suffix('\r').unwrap_or(t))
            .unwrap_or(&text);
        return Ok(SecretString::from(password));
    }
    args.sasl_password
        .clone()
        .ok_or(KafkaSecurityError::MissingPassword(
            SaslMechanism::from(mechanism).name(),
        ))
}

fn tls_config(
    args: &KafkaSecurityArgs,
) -> Result<Option<rustls::ClientConfig>, KafkaSecurityError> {
    if !args.tls {
        let file_flag = [
            ("--kafka-tls-ca-file", args.tls_ca_file.is_some()),
            ("--kafka-tls-cert-file", args.tls_cert_file.is_some()),
            ("--kafka-tls-key-file", args.tls_key_file.is_some()),
        ]
        .into_iter()
        .find(|(_, set)| *set);
        return match file_flag {
            Some((flag, _)) => Err(KafkaSecurityError::TlsFileWithoutTls { flag }),
            None => Ok(None),
        };
    }
    let roots = match &args.tls_ca_file {
        Some(path) => ca_roots(path)?,
        None => RootCertStore {
            roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
        },
    };
    // The provider is named rather than taken from the process default: other crates in a
    // binary may enable a second rustls provider, and then there is no default.
    let builder = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(|e| KafkaSecurityError::ClientCertificate(e.to_string()))?
    .with_root_certificates(roots);
    let config = match (&args.tls_cert_file, &args.tls_key_file) {
        (Some(cert), Some(key)) => builder
            .with_client_auth_cert(certificates(cert)?, private_key(key)?)
            .map_err(|e| KafkaSecurityError::ClientCertificate(e.to_string()))?,
        _ => builder.with_no_client_auth(),
    };
    Ok(Some(config))
}

fn read_file(what: &'static str, path: &Path) -> Result<Vec<u8>, KafkaSecurityError> {
    std::fs::read(path).map_err(|e| KafkaSecurityError::File {
        what,
        path: path.display().to_string(),
        cause: e.to_string(),
    })
}

fn pem_error(what: &'static str, path: &Path, cause: impl ToString) -> KafkaSecurityError {
    KafkaSecurityError::File {
        what,
        path: path.display().to_string(),
        cause: cause.to_string(),
    }
}

fn certificates(path: &Path) -> Result<Vec<CertificateDer<'static>>, KafkaSecurityError> {
    let what = "PEM certificate file";
    let pem = read_file(what, path)?;
    let certificates = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| pem_error(what, path, e))?;
    if certificates.is_empty() {
        return Err(pem_error(what, path, "it holds no CERTIFICATE block"));
    }
    Ok(certificates)
}

fn ca_roots(path: &Path) -> Result<RootCertStore, KafkaSecurityError> {
    let mut roots = RootCertStore::empty();
    for certificate in certificates(path)? {
        roots
            .add(certificate)
            .map_err(|e| pem_error("CA certificate file", path, e))?;
    }
    Ok(roots)
}

fn private_key(path: &Path) -> Result<PrivateKeyDer<'static>, KafkaSecurityError> {
    let what = "PEM private key file";
    let pem = read_file(what, path)?;
    PrivateKeyDer::from_pem_slice(&pem).map_err(|e| pem_error(what, path, e))
}

#[cfg(test)]
mod tests {
    use std::io::Write;

    use super::*;

    fn args() -> KafkaSecurityArgs {
        KafkaSecurityArgs::default()
    }

    #[test]
    fn nothing_set_is_plaintext_without_sasl() {
        let security = resolve(&args()).expect("valid");
        assert!(security.tls.is_none() && security.sasl.is_none());
        assert_eq!(describe(&security), "plaintext, no SASL");
    }

    #[test]
    fn a_mechanism_without_a_password_is_refused() {
        let mut args = args();
        args.sasl_mechanism = Some(SaslMechanismArg::ScramSha512);
        args.sasl_username = Some("worker".into());
        let error = resolve(&args).unwrap_err().to_string();
        assert!(error.contains("SCRAM-SHA-512 needs a password"), "{error}");
    }

    #[test]
    fn the_password_file_loses_its_trailing_newline_only() {
        let mut file = tempfile::NamedTempFile::new().expect("temp file");
        file.write_all(b" s3cret \r\n").expect("write");
        let mut args = args();
        args.sasl_mechanism = Some(SaslMechanismArg::ScramSha256);
        args.sasl_username = Some("worker".into());
        args.sasl_password_file = Some(file.path().to_path_buf());
        let security = resolve(&args).expect("valid");
        let sasl = security.sasl.expect("sasl");
        assert_eq!(sasl.password.expose_secret(), " s3cret ");
        assert_eq!(sasl.mechanism, SaslMechanism::ScramSha256);
        assert!(!describe(&Security {
            tls: None,
            sasl: Some(sasl)
        })
        .contains("s3cret"));
    }

    #[test]
    fn a_password_given_as_a_flag_never_shows_in_debug_output() {
        let mut args = args();
        args.sasl_mechanism = Some(SaslMechanismArg::Plain);
        args.sasl_username = Some("worker".into());
        args.sasl_password = Some(SecretString::from("hunter2-flag"));
        assert!(!format!("{args:?}").contains("hunter2-flag"));
        let security = resolve(&args).expect("valid");
        assert!(!format!("{security:?}").contains("hunter2-flag"));
        let sasl = security.sasl.expect("sasl");
        assert_eq!(sasl.password.expose_secret(), "hunter2-flag");
    }

    #[test]
    fn a_ca_file_without_tls_is_refused_rather_than_ignored() {
        let mut args = args();
        args.tls_ca_file = Some("/etc/ssl/ca.pem".into());
        let error = resolve(&args).unwrap_err().to_string();
        assert!(
            error.contains("--kafka-tls-ca-file") && error.contains("--kafka-tls"),
            "{error}"
        );
    }

    #[test]
    fn tls_without_a_ca_file_trusts_the_public_roots() {
        let mut args = args();
        args.tls = true;
        let security = resolve(&args).expect("valid");
        assert!(security.tls.is_some());
        assert_eq!(describe(&security), "TLS, no SASL");
    }

    fn mismatch(mismatch: Mismatch) -> String {
        explain(&kafka_group::Error::Mismatch {
            address: "kafka-0:9093".into(),
            mismatch,
        })
    }

    #[test]
    fn a_listener_mismatch_names_the_broker_and_the_flags_to_change() {
        let tls = mismatch(Mismatch::TlsExpected);
        assert!(
            tls.starts_with(
                "the broker at kafka-0:9093 expects TLS: add --kafka-tls (KAFKA_TLS=true)"
            ),
            "{tls}"
        );
        assert!(mismatch(Mismatch::TlsNotSpoken).contains("drop --kafka-tls"));
        let sasl = mismatch(Mismatch::SaslExpected {
            offered: vec!["SCRAM-SHA-512".into()],
        });
        assert!(
            sasl.contains(
                "expects SASL authentication (it offers SCRAM-SHA-512): set --kafka-sasl-mechanism"
            ),
            "{sasl}"
        );
        assert!(!sasl.contains("speaks only"), "{sasl}");
        assert!(mismatch(Mismatch::SaslNotEnabled).contains("drop --kafka-sasl-mechanism"));
        let mechanism = mismatch(Mismatch::MechanismNotOffered {
            mechanism: SaslMechanism::ScramSha256,
            offered: vec!["PLAIN".into(), "SCRAM-SHA-512".into()],
        });
        assert!(
            mechanism.contains(
                "does not offer SASL mechanism SCRAM-SHA-256 (it offers: PLAIN, SCRAM-SHA-512)"
            ),
            "{mechanism}"
        );
    }

    #[test]
    fn mechanisms_this_client_cannot_speak_are_said_so() {
        let text = mismatch(Mismatch::SaslExpected {
            offered: vec!["GSSAPI".into(), "OAUTHBEARER".into()],
        });
        assert!(
            text.contains("this client speaks only PLAIN, SCRAM-SHA-256, SCRAM-SHA-512"),
            "{text}"
        );
    }

    #[test]
    fn other_errors_keep_their_own_words() {
        let error = kafka_group::Error::Authentication("refused".into());
        assert_eq!(explain(&error), "refused");
    }

    #[test]
    fn a_missing_or_empty_ca_file_names_the_file() {
        let mut args = args();
        args.tls = true;
        args.tls_ca_file = Some("/nonexistent/ca.pem".into());
        let error = resolve(&args).unwrap_err().to_string();
        assert!(error.contains("/nonexistent/ca.pem"), "{error}");

        let empty = tempfile::NamedTempFile::new().expect("temp file");
        args.tls_ca_file = Some(empty.path().to_path_buf());
        let error = resolve(&args).unwrap_err().to_string();
        assert!(error.contains("no CERTIFICATE"), "{error}");
    }
}
