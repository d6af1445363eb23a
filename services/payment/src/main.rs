//! `tripstream-payment`: The payment service: balances, charges and refunds. as its own process (the same as `tripstream run payment`).

fn main() -> std::process::ExitCode {
    streams::service::main(
        "payment",
        env!("CARGO_BIN_NAME"),
        "The payment service: balances, charges and refunds.",
        payment::run,
    )
}
