//! Signals to the processes tests start, and waiting for their exit with a deadline.

use std::{
    process::{Child, ExitStatus},
    time::Duration,
};

pub use nix::sys::signal::Signal;
use nix::unistd::Pid;
use wait_timeout::ChildExt;

/// Sends `signal` to the process `pid`; a test that cannot signal its own child is broken.
pub fn signal(pid: u32, signal: Signal) {
    let raw = i32::try_from(pid).expect("a pid fits in an i32");
    nix::sys::signal::kill(Pid::from_raw(raw), signal)
        .unwrap_or_else(|e| panic!("cannot send {signal} to process {pid}: {e}"));
}

/// The child's exit status once it exits, `None` if it is still running after `within`.
pub fn wait_exit(child: &mut Child, within: Duration) -> Option<ExitStatus> {
    child.wait_timeout(within).expect("wait for the child")
}
