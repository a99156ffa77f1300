//! Attach a terminal to the IPython kernel a Python service embeds:
//! `cargo run --example kernel` (needs ipykernel and jupyter-console), then type Python;
//! `x` is the service's variable. Leave the console with `exit` (or Ctrl-D).

use hitchserve::{Bundle, Service};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let project = std::env::temp_dir().join("hitchserve-kernel-demo");
    std::fs::create_dir_all(&project)?;
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
