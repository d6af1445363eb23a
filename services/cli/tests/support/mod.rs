//! Helpers shared by the test binaries that start `tripstream` processes.

pub mod cluster;

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};

/// A child process, killed on drop so a failing test leaves nothing running.
pub struct Process(pub Child);

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Starts `tripstream registry` from `tripstream` (the test binary's own base command) on
/// `bootstrap`, and reads its URL from the first line it prints.
pub fn start_registry(mut tripstream: Command, bootstrap: &str) -> (Process, String) {
    let mut registry = Process(
        tripstream
            .args([
                "registry",
                "--listen",
                "127.0.0.1:0",
                "--brokers",
                bootstrap,
            ])
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("registry starts"),
    );
    // Read the first line for the URL, then keep draining stdout so the registry never
    // writes into a closed pipe.
    let mut lines = BufReader::new(registry.0.stdout.take().expect("stdout")).lines();
    let first_line = lines
        .next()
        .expect("a line")
        .expect("registry prints its URL");
    std::thread::spawn(move || lines.for_each(drop));
    let url = first_line
        .split_whitespace()
        .find(|w| w.starts_with("http://"))
        .expect("URL in the first line")
        .to_owned();
    (registry, url)
}
