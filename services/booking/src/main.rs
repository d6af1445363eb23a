//! `tripstream-booking`: The booking service: the reservation saga. as its own process (the same as `tripstream run booking`).

fn main() -> std::process::ExitCode {
    streams::service::main(
        "booking",
        env!("CARGO_BIN_NAME"),
        "The booking service: the reservation saga.",
        booking::run,
    )
}
