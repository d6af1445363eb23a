//! `tripstream-hotel`: The hotel service: catalog and room inventory per night. as its own process (the same as `tripstream run hotel`).

fn main() -> std::process::ExitCode {
    streams::service::main(
        "hotel",
        env!("CARGO_BIN_NAME"),
        "The hotel service: catalog and room inventory per night.",
        hotel::run,
    )
}
