//! The `hitchserve` binary: the command of this crate's library ([`hitchserve_cli::run`]),
//! which runs this executable again when it starts a bundle in the background.

fn main() -> std::process::ExitCode {
    // Empty when the executable can't be found: `run` then says so if it needs it.
    let relaunch = std::env::current_exe()
        .map(|exe| vec![exe.into_os_string()])
        .unwrap_or_default();
    hitchserve_cli::run(relaunch, std::env::args_os().skip(1).collect()).into()
}
