//! A broker and a database that take only TLS and credentials, as managed services do: nisshi
//! with a SCRAM user behind TLS, secantusd-rs with `--auth` and TLS, the test certificates,
//! and the Kafka password in a file, with the flags and connection string that reach them.

use std::path::Path;

use crate::{InfraServer, TestCertificates};

pub const KAFKA_USER: &str = "shop-workers";
pub const KAFKA_PASSWORD: &str = "kafka-Pa55-word";
pub const MONGO_USER: &str = "shop";
pub const MONGO_PASSWORD: &str = "mongo-Pa55-word";

/// The certificates, both servers, and files the flags name (kept while it lives).
pub struct SecuredServers {
    pub certs: TestCertificates,
    pub kafka: InfraServer,
    pub mongo: InfraServer,
    files: tempfile::TempDir,
}

impl SecuredServers {
    pub fn start() -> Self {
        let certs = TestCertificates::new();
        let tls = ["--tls", certs.dir()];
        let kafka_user = format!("{KAFKA_USER}:{KAFKA_PASSWORD}");
        let mongo_user = format!("{MONGO_USER}:{MONGO_PASSWORD}");
        let kafka = InfraServer::start_with("kafka", &["--user", &kafka_user, tls[0], tls[1]]);
        let mongo = InfraServer::start_with("mongo", &["--user", &mongo_user, tls[0], tls[1]]);
        let files = tempfile::tempdir().expect("temp dir");
        std::fs::write(
            files.path().join("kafka-password"),
            format!("{KAFKA_PASSWORD}\n"),
        )
        .expect("password file");
        Self {
            certs,
            kafka,
            mongo,
            files,
        }
    }

    /// A directory for more files a test names in flags (kept while this lives).
    pub fn files(&self) -> &Path {
        self.files.path()
    }

    /// The file holding the Kafka password.
    pub fn password_file(&self) -> String {
        self.files().join("kafka-password").display().to_string()
    }

    /// The Kafka flags of gateway, worker and lag tool, with `password_file` holding the
    /// password and `ca` the CA certificates trusted.
    pub fn kafka_flags(&self, password_file: &str, ca: &str) -> Vec<String> {
        vec![
            "--kafka-sasl-mechanism=SCRAM-SHA-512".into(),
            format!("--kafka-sasl-username={KAFKA_USER}"),
            format!("--kafka-sasl-password-file={password_file}"),
            "--kafka-tls".into(),
            format!("--kafka-tls-ca-file={ca}"),
        ]
    }

    /// The MongoDB connection string with `password`, trusting the CA certificates in `ca`.
    pub fn mongo_uri(&self, password: &str, ca: &str) -> String {
        let port = self
            .mongo
            .address
            .rsplit(':')
            .next()
            .expect("mongodb://host:port");
        format!("mongodb://{MONGO_USER}:{password}@127.0.0.1:{port}/?tls=true&tlsCAFile={ca}&authSource=admin")
    }
}
