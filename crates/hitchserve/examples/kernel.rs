//! Attach a terminal to the IPython kernel a Python service embeds:
//! `cargo run --example kernel` (needs ipykernel and jupyter-console), then type Python;
//! `x` is the service's variable. Leave the console with `exit` (or Ctrl-D).

use hitchserve::{Bundle, Service};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    // A directory of our own, new (never one another user may have made in /tmp).
    let project =
        std::env::temp_dir().join(format!("hitchserve-kernel-demo-{}", std::process::id()));
    std::os::unix::fs::DirBuilderExt::mode(&mut std::fs::DirBuilder::new(), 0o700)
        .create(&project)?;
    std::fs::write(
        project.join("embed.py"),
        "import IPython\nx = 21\nprint('READY', flush=True)\nIPython.embed_kernel(local_ns={'x': x})\n",
    )?;
    let mut bundle = Bundle::new(&project);
    bundle.add(
        "Py",
        Service::new(["python3", "-u", "embed.py"]).ready_when(|l| l == "READY"),
    )?;
    bundle.startup()?;
    bundle.connect_to_kernel("Py")?;
    bundle.log("back from the kernel");
    bundle.shutdown()?;
    Ok(())
}
