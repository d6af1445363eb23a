//! `tripstream`: the command line of the tripstream platform.

use std::process::ExitCode;

use clap::Parser;

/// glibc's allocator was a fifth of a replay's samples (`_int_malloc`, `_int_free`,
/// `malloc_consolidate`: many small, short-lived buffers freed on other threads); mimalloc's
/// thread-local free lists serve that pattern far cheaper.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    let cli = tripstream_cli::Cli::parse();
    streams::telemetry::init(cli.log_filter());
    tripstream_cli::run(cli)
}
