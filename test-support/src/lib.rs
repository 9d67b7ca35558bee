//! Test support shared by the workspace's integration tests: real servers started through
//! `scripts/infra.sh`, and the independent Python clients that cross-check our claims.

use std::{
    path::{Path, PathBuf},
    process::Command,
};

pub mod kafka;
pub mod mock_cluster;
pub mod process;
pub mod proxy;
pub mod secured;
pub mod tokens;

pub use kafka::{group_protocol, Broker, TestKafka};
pub use mock_cluster::MockCluster;
pub use secured::SecuredServers;

/// Serves `app` on a free loopback port in the background: its base URL (`http://host:port`)
/// and the server task (abort it to stop serving).
pub async fn serve_on_loopback(
    app: impl poem::IntoEndpoint + Send + 'static,
) -> (String, tokio::task::JoinHandle<std::io::Result<()>>) {
    use poem::listener::{Acceptor, Listener};
    let acceptor = poem::listener::TcpListener::bind("127.0.0.1:0")
        .into_acceptor()
        .await
        .expect("bind a loopback port");
    let address = acceptor.local_addr()[0]
        .as_socket_addr()
        .copied()
        .expect("a TCP address");
    let task = tokio::spawn(poem::Server::new_with_acceptor(acceptor).run(app));
    (format!("http://{address}"), task)
}

pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("test-support sits in the workspace")
        .to_path_buf()
}

/// A server started by `scripts/infra.sh`; stopped when dropped. The watchdog given our pid
/// also stops it if this test process dies first.
pub struct InfraServer {
    kind: &'static str,
    dir: tempfile::TempDir,
    options: Vec<String>,
    pub address: String,
}

impl InfraServer {
    /// `kind` is `kafka` or `mongo`.
    pub fn start(kind: &'static str) -> Self {
        Self::start_with(kind, &[])
    }

    /// With `infra.sh start` options: `--user NAME:PASSWORD`, `--tls CERTS`.
    pub fn start_with(kind: &'static str, options: &[&str]) -> Self {
        let dir = tempfile::Builder::new()
            .prefix(&format!("scalable-shop-{kind}-"))
            .tempdir()
            .expect("temp dir");
        let options: Vec<String> = options.iter().map(|o| o.to_string()).collect();
        let address = start_server(kind, dir.path(), &options);
        Self {
            kind,
            dir,
            options,
            address,
        }
    }

    /// The server's process id.
    pub fn pid(&self) -> u32 {
        std::fs::read_to_string(self.dir.path().join("pid"))
            .ok()
            .and_then(|pid| pid.trim().parse().ok())
            .expect("a started server has a pid file")
    }

    pub fn stop(&self) {
        infra(&["stop", path_str(self.dir.path())]);
    }

    /// SIGKILLs the server, as a crash or the OOM killer would, and returns its pid.
    pub fn kill(&self) -> u32 {
        let pid = std::fs::read_to_string(self.dir.path().join("pid"))
            .expect("a started server has a pid file");
        let pid: u32 = pid.trim().parse().expect("the pid file holds a pid");
        process::signal(pid, process::Signal::SIGKILL);
        pid
    }

    /// Starts again in the same directory: same data, same port, same security.
    pub fn restart(&self) {
        let address = start_server(self.kind, self.dir.path(), &self.options);
        assert_eq!(
            address, self.address,
            "a restarted server keeps its address"
        );
    }
}

impl Drop for InfraServer {
    fn drop(&mut self) {
        self.stop();
    }
}

fn start_server(kind: &str, dir: &Path, options: &[String]) -> String {
    let owner = std::process::id().to_string();
    let mut args = vec!["start", kind, path_str(dir), "--owner-pid", &owner];
    args.extend(options.iter().map(String::as_str));
    infra(&args)
}

/// A test CA with a server certificate for 127.0.0.1/localhost and a client certificate
/// (`ca.pem`, `server.pem`/`.key`, `client.pem`/`.key`), made by `infra.sh certs`.
pub struct TestCertificates {
    dir: tempfile::TempDir,
}

impl TestCertificates {
    pub fn new() -> Self {
        let dir = tempfile::Builder::new()
            .prefix("scalable-shop-certs-")
            .tempdir()
            .expect("temp dir");
        infra(&["certs", path_str(dir.path())]);
        Self { dir }
    }

    pub fn dir(&self) -> &str {
        path_str(self.dir.path())
    }

    /// A file of the set, e.g. `ca.pem`.
    pub fn file(&self, name: &str) -> String {
        format!("{}/{name}", self.dir())
    }
}

impl Default for TestCertificates {
    fn default() -> Self {
        Self::new()
    }
}

fn path_str(path: &Path) -> &str {
    path.to_str().expect("temp paths are UTF-8")
}

fn infra(args: &[&str]) -> String {
    let output = Command::new(workspace_root().join("scripts/infra.sh"))
        .args(args)
        .output()
        .expect("run scripts/infra.sh");
    assert!(
        output.status.success(),
        "scripts/infra.sh {args:?} failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout)
        .expect("utf-8")
        .trim()
        .to_string()
}

/// The Python of the test virtualenv (`make test-deps`), or `TEST_PYTHON`.
pub fn python() -> PathBuf {
    std::env::var_os("TEST_PYTHON")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace_root().join(".local/venv/bin/python"))
}

/// Runs a Python script from `test-support/py/` and parses its JSON output.
pub fn run_python(script: &str, args: &[&str]) -> serde_json::Value {
    run_python_with_env(script, args, &[])
}

/// [`run_python`] with environment variables, e.g. `KAFKA_CLIENT_CONFIG` (JSON librdkafka
/// settings) for the Kafka scripts.
pub fn run_python_with_env(script: &str, args: &[&str], env: &[(&str, &str)]) -> serde_json::Value {
    let output = Command::new(python())
        .arg(workspace_root().join("test-support/py").join(script))
        .args(args)
        .envs(env.iter().copied())
        .output()
        .unwrap_or_else(|e| panic!("run {script} (make test-deps installs its virtualenv): {e}"));
    assert!(
        output.status.success(),
        "{script} failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    serde_json::from_slice(&output.stdout)
        .unwrap_or_else(|e| panic!("{script} printed no JSON: {e}"))
}

/// One Kafka (the one `TEST_KAFKA` names) and one database shared by the tests of a test
/// binary; each test isolates itself with its own topic, group and database names. The
/// watchdogs stop both when the test process exits.
pub fn shared_servers() -> &'static (TestKafka, InfraServer) {
    static SERVERS: std::sync::OnceLock<(TestKafka, InfraServer)> = std::sync::OnceLock::new();
    SERVERS.get_or_init(|| (TestKafka::start(), InfraServer::start("mongo")))
}
