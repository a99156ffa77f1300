//! The `hitchsmtp` binary: the mock SMTP server of this crate's library ([`hitchsmtp::run`]).

fn main() {
    std::process::exit(hitchsmtp::run(std::env::args().skip(1)));
}
