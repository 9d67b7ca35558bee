//! `scripts/infra.sh` itself: a server that died is started anew, even when it lingers as an
//! unreaped zombie that `kill -0` takes for alive.

use std::{
    net::{SocketAddr, TcpStream},
    time::{Duration, Instant},
};

use test_support::InfraServer;

/// The state letter of a process (`Z` for a zombie), or `None` once it is gone.
fn process_state(pid: u32) -> Option<char> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    stat.rsplit_once(") ")?.1.chars().next()
}

/// Makes this process adopt the orphans of its descendants and never reap them, as a
/// container's PID 1 often does: a server killed after `infra.sh` exited then stays a zombie.
fn keep_killed_servers_as_zombies() {
    // SAFETY: PR_SET_CHILD_SUBREAPER takes an integer flag and touches no memory of ours.
    let set = unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) };
    assert_eq!(set, 0, "prctl(PR_SET_CHILD_SUBREAPER)");
}

#[test]
fn a_server_killed_with_sigkill_is_started_anew_at_once() {
    keep_killed_servers_as_zombies();
    for kind in ["mongo", "kafka"] {
        let server = InfraServer::start(kind);
        let pid = server.kill();
        let killed_at = Instant::now();
        while process_state(pid).is_some_and(|state| state != 'Z') {
            assert!(
                killed_at.elapsed() < Duration::from_secs(10),
                "{kind} server {pid} did not die"
            );
            std::thread::sleep(Duration::from_millis(10));
        }
        assert_eq!(
            process_state(pid),
            Some('Z'),
            "{kind} server {pid} is a zombie"
        );

        server.restart();
        let address: SocketAddr = server
            .address
            .trim_start_matches("mongodb://")
            .parse()
            .expect("host:port");
        TcpStream::connect_timeout(&address, Duration::from_secs(5))
            .unwrap_or_else(|e| panic!("the restarted {kind} server takes no connection: {e}"));
    }
}
