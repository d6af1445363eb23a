//! `tripstream-flight`: The flight service: catalog and seat inventory. as its own process (the same as `tripstream run flight`).

fn main() -> std::process::ExitCode {
    streams::service::main(
        "flight",
        env!("CARGO_BIN_NAME"),
        "The flight service: catalog and seat inventory.",
        flight::run,
    )
}
