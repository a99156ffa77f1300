//! Builds the time-travel shim (`src/timetravel/shim.c`) into a shared library that the
//! crate embeds and writes out at run time. Needs a C compiler (`$CC`, else `cc`).

use std::path::PathBuf;
use std::process::Command;

fn main() {
    let src = "src/timetravel/shim.c";
    println!("cargo:rerun-if-changed={src}");
    println!("cargo:rerun-if-env-changed=CC");
    let out = PathBuf::from(std::env::var_os("OUT_DIR").expect("cargo sets OUT_DIR"));
    let so = out.join("hitchserve-timeshim.so");
    let cc = std::env::var("CC").unwrap_or_else(|_| "cc".to_owned());
    // Every exec'd faked process loads this, so it is built to load like an empty library
    // (measured per exec of /bin/true: 484 us then 479 us, against 479 us for an empty .so
    // and 445 us for none): `-z noseparate-code` gives two loadable segments instead of four
    // (two mmaps fewer; the cost, headers and constants mapped executable in a library only
    // tests load, is the layout every library had before binutils 2.31); `-nostartfiles`
    // drops the C runtime's start files, whose weak references (`__gmon_start__`, the TM
    // clone table) are failed look-ups through every loaded library. The constructor still
    // runs: the loader calls `.init_array` itself.
    let status = Command::new(&cc)
        .args([
            "-shared",
            "-fPIC",
            "-O2",
            "-Wall",
            "-Wl,-z,noseparate-code",
            "-nostartfiles",
            "-o",
        ])
        .arg(&so)
        .arg(src)
        .arg("-ldl")
        .status();
    match status {
        Ok(s) if s.success() => {}
        Ok(s) => panic!("building the time-travel shim with `{cc}` failed ({s})"),
        Err(e) => panic!(
            "hitchserve needs a C compiler to build its time-travel shim: `{cc}` could not run \
             ({e}); install gcc or clang, or set CC"
        ),
    }
}
