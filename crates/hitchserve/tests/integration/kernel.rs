//! Attaching to the IPython kernel a Python service embedded, driven for real through
//! jupyter_client in a sub-process.

use hitchserve::Service;

use crate::common::{Project, PATIENCE};

const EMBED: &str =
    "import IPython\nx = 21\nprint('READY', flush=True)\nIPython.embed_kernel(local_ns={'x': x})\n";

const DRIVE: &str = r#"
import sys
from jupyter_client import BlockingKernelClient
c = BlockingKernelClient(connection_file=sys.argv[1])
c.load_connection_file()
c.start_channels()
c.wait_for_ready(timeout=60)
def show(msg):
    if msg["msg_type"] == "stream":
        sys.stdout.write(msg["content"]["text"])
reply = c.execute_interactive("print(x * 2)", timeout=60, output_hook=show)
print("STATUS", reply["content"]["status"])
"#;

#[test]
fn a_test_finds_the_embedded_kernel_and_executes_code_in_it() {
    let p = Project::new("kernel");
    p.write("embed.py", EMBED);
    p.write("drive.py", DRIVE);
    let mut b = p.bundle();
    b.add(
        "Py",
        Service::new(["python3", "-u", "embed.py"]).ready_when(|l| l == "READY"),
    )
    .unwrap();
    b.startup().unwrap();
    let file = b.wait_for_kernel("Py", PATIENCE).unwrap();
    assert!(file.exists(), "{}", file.display());
    let out = b
        .service("Py")
        .unwrap()
        .subcommand(["python3", "drive.py"])
        .arg(&file)
        .checked_output()
        .unwrap();
    let text = out.stdout_text();
    assert!(text.contains("42") && text.contains("STATUS ok"), "{text}");
    // Asked again, the kernel already announced is found at once.
    assert_eq!(b.wait_for_kernel("Py", PATIENCE).unwrap(), file);
}

#[test]
fn waiting_for_a_kernel_that_never_comes_times_out_clearly() {
    let p = Project::new("no-kernel");
    let mut b = p.bundle();
    b.add(
        "Plain",
        Service::new(["sh", "-c", "echo READY; exec sleep 1000"]).ready_when(|l| l == "READY"),
    )
    .unwrap();
    b.startup().unwrap();
    let err = b
        .wait_for_kernel("Plain", std::time::Duration::from_millis(300))
        .unwrap_err();
    assert!(err.to_string().contains("IPython kernel"), "{err}");
}
