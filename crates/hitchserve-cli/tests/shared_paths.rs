//! Another local user attacks a root-run bundle through the temporary directory, and the
//! command line's own PostgreSQL example works as root. Run as root (as CI is): the attacker
//! is a real second user, created here if missing, acting through `runuser`.

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};

const BIN: &str = env!("CARGO_BIN_EXE_hitchserve");
const ATTACKER: &str = "hs-attacker";

fn is_root() -> bool {
    // SAFETY: getuid has no preconditions.
    unsafe { libc::getuid() == 0 }
}

/// A fresh directory; `sticky_tmp` makes it world-writable and sticky, as `/tmp` is.
fn fresh_dir(tag: &str, sticky_tmp: bool) -> PathBuf {
    static N: AtomicU32 = AtomicU32::new(0);
    let dir = std::env::temp_dir().join(format!(
        "hs-sec-{tag}-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    ));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    if sticky_tmp {
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o1777)).unwrap();
    }
    dir
}

/// The attacker's uid, creating the user if needed (once: tests run in parallel).
fn attacker() -> u32 {
    static MADE: std::sync::Once = std::sync::Once::new();
    MADE.call_once(|| {
        if nix::unistd::User::from_name(ATTACKER).unwrap().is_none() {
            let made = Command::new("useradd")
                .args([
                    "--system",
                    "--no-create-home",
                    "--shell",
                    "/bin/sh",
                    ATTACKER,
                ])
                .status()
                .unwrap();
            assert!(made.success(), "useradd {ATTACKER} failed");
        }
    });
    let id = Command::new("id").args(["-u", ATTACKER]).output().unwrap();
    String::from_utf8_lossy(&id.stdout).trim().parse().unwrap()
}

/// Run a shell script as the attacker.
fn as_attacker(script: &str) {
    let ok = Command::new("runuser")
        .args(["-u", ATTACKER, "--", "sh", "-c", script])
        .status()
        .unwrap()
        .success();
    assert!(ok, "the attacker's script failed: {script}");
}

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

struct Project {
    dir: PathBuf,
    tmpdir: PathBuf,
}

impl Project {
    fn new(dir: PathBuf, tmpdir: &Path, toml: &str) -> Project {
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("hitchserve.toml"), toml).unwrap();
        Project {
            dir,
            tmpdir: tmpdir.to_path_buf(),
        }
    }

    fn run(&self, args: &[&str]) -> Output {
        Command::new(BIN)
            .args(args)
            .current_dir(&self.dir)
            .env("TMPDIR", &self.tmpdir)
            .stdin(Stdio::null())
            .output()
            .unwrap()
    }
}

impl Drop for Project {
    fn drop(&mut self) {
        let _ = self.run(&["down"]);
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

const CLOCK: &str = r#"
[bundle]
startup_timeout = "30s"

[services.Clock]
command = ["sh", "-c", "date +%Y; echo READY; exec sleep 1000"]
ready = { line_contains = "READY" }
"#;

/// A shared library whose constructor leaves a file behind: proof that it was loaded.
fn build_evil_so(dir: &Path, marker: &Path) -> PathBuf {
    let src = dir.join("evil.c");
    std::fs::write(
        &src,
        format!(
            "#include <stdio.h>\n__attribute__((constructor)) static void pwn(void) {{ \
             FILE *f = fopen(\"{}\", \"w\"); if (f) fclose(f); }}\n",
            marker.display()
        ),
    )
    .unwrap();
    let so = dir.join("evil.so");
    let built = Command::new("cc")
        .args(["-shared", "-fPIC", "-o"])
        .arg(&so)
        .arg(&src)
        .status()
        .unwrap();
    assert!(built.success());
    so
}

#[test]
fn a_planted_time_shim_is_never_loaded() {
    if !is_root() {
        eprintln!("skipped: the attack needs a second user, made by root");
        return;
    }
    let uid = attacker();
    let work = fresh_dir("shim-work", false);
    // Learn the shim's file name from a clean run.
    let clean_tmp = fresh_dir("shim-clean", true);
    let clean = Project::new(work.join("clean"), &clean_tmp, CLOCK);
    let up = clean.run(&["up", "--detach"]);
    assert!(up.status.success(), "{}", text(&up));
    let lib = clean_tmp.join("hitchserve-0").join("lib");
    let shim_name = std::fs::read_dir(&lib)
        .unwrap()
        .flatten()
        .map(|e| e.file_name())
        .find(|n| n.to_string_lossy().starts_with("timeshim-"))
        .expect("the shim is in the per-user directory");
    // The attacker pads to the real shim's length: an old version trusted any file of it.
    let shim_len = std::fs::metadata(lib.join(&shim_name)).unwrap().len();
    drop(clean);
    let _ = std::fs::remove_dir_all(&clean_tmp);

    // The attacker prepares the per-user directory of root, with their library in it,
    // and the same in the old fallback place, for a project path with a space and a colon.
    let tmp = fresh_dir("shim-attack", true);
    let marker = fresh_dir("shim-marker", true).join("pwned");
    let evil = build_evil_so(&work, &marker);
    std::fs::set_permissions(&work, std::fs::Permissions::from_mode(0o755)).unwrap();
    std::fs::set_permissions(&evil, std::fs::Permissions::from_mode(0o755)).unwrap();
    let planted = tmp.join("hitchserve-0");
    as_attacker(&format!(
        "set -e; mkdir -m 777 {p} {p}/lib; for f in {p}/{name} {p}/lib/{name}; do \
         cp {evil} $f; truncate -s {shim_len} $f; chmod 666 $f; done",
        p = planted.display(),
        evil = evil.display(),
        name = shim_name.to_string_lossy()
    ));
    assert_eq!(std::fs::metadata(&planted).unwrap().uid(), uid);
    let p = Project::new(work.join("my project:1"), &tmp, CLOCK);
    let up = p.run(&["up", "--detach"]);
    let out = text(&up);
    assert!(!up.status.success(), "{out}");
    assert!(out.contains("refusing to use"), "{out}");
    assert!(out.contains(&planted.display().to_string()), "{out}");
    assert!(out.contains(&format!("owned by uid {uid}")), "{out}");
    assert!(!marker.exists(), "the planted library was loaded");

    // Once the planted directory is gone, the same project (space, colon) time-travels.
    std::fs::remove_dir_all(&planted).unwrap();
    let up = p.run(&["up", "--detach"]);
    assert!(up.status.success(), "{}", text(&up));
    let tt = p.run(&["time-travel", "+3660d"]);
    assert!(tt.status.success(), "{}", text(&tt));
    let year = p.run(&["exec", "Clock", "--", "date", "+%Y"]);
    let year: i32 = String::from_utf8_lossy(&year.stdout)
        .trim()
        .parse()
        .unwrap();
    let now: i32 = hitchserve::jiff::ZonedDateTime::now().year().into();
    assert!(year >= now + 9, "{year}");
    assert!(!marker.exists());
    drop(p);
    let _ = std::fs::remove_dir_all(&work);
    let _ = std::fs::remove_dir_all(&tmp);
}

#[test]
fn symlinks_planted_in_the_temporary_directory_are_refused_not_followed() {
    if !is_root() {
        eprintln!("skipped: the attack needs a second user, made by root");
        return;
    }
    attacker();
    let tmp = fresh_dir("links", true);
    let victims = fresh_dir("victims", false);
    // Root's files that the attacker would like to change.
    let victim_file = victims.join("precious");
    std::fs::write(&victim_file, "keep me").unwrap();
    let root_only = victims.join("root-only");
    std::fs::create_dir(&root_only).unwrap();
    std::fs::set_permissions(&root_only, std::fs::Permissions::from_mode(0o700)).unwrap();
    // Every port lock and the PostgreSQL template directory where the old versions put them,
    // and the per-user directory itself, as links to root's things.
    as_attacker(&format!(
        "set -e; mkdir -m 777 {t}/hitchserve-ports-0; \
         python3 -c 'import os\nfor p in range(1024, 65536): os.symlink(\"{v}\", \"{t}/hitchserve-ports-0/%d.lock\" % p)'; \
         ln -s {r} {t}/hitchserve-pg-templates-postgres",
        t = tmp.display(),
        v = victim_file.display(),
        r = root_only.display()
    ));
    let toml = r#"
[bundle]
startup_timeout = "60s"

[services.Postgres]
kind = "postgres"

[services.Web]
command = ["python3", "-m", "http.server", "{port.http}", "--bind", "127.0.0.1"]
ports = ["http"]
ready = { tcp = "{port.http}" }
"#;
    let work = fresh_dir("links-work", false);
    let p = Project::new(work.join("proj"), &tmp, toml);
    let up = p.run(&["up", "--detach"]);
    assert!(up.status.success(), "{}", text(&up));
    assert_eq!(std::fs::read_to_string(&victim_file).unwrap(), "keep me");
    assert_eq!(std::fs::metadata(&root_only).unwrap().uid(), 0);
    drop(p);

    // The per-user directory itself as a link: refused, with what to do.
    let tmp2 = fresh_dir("links2", true);
    as_attacker(&format!(
        "ln -s {} {}/hitchserve-0",
        victims.display(),
        tmp2.display()
    ));
    let p = Project::new(work.join("proj2"), &tmp2, CLOCK);
    let up = p.run(&["up", "--detach"]);
    let out = text(&up);
    assert!(!up.status.success(), "{out}");
    assert!(out.contains("symbolic link"), "{out}");
    assert!(out.contains("TMPDIR"), "{out}");
    drop(p);

    // A temporary directory the attacker owns (sticky or not, its owner may rename what we
    // make there): refused.
    let tmp3 = fresh_dir("links3", false);
    std::os::unix::fs::chown(&tmp3, Some(attacker()), None).unwrap();
    std::fs::set_permissions(&tmp3, std::fs::Permissions::from_mode(0o1777)).unwrap();
    let p = Project::new(work.join("proj3"), &tmp3, CLOCK);
    let up = p.run(&["up", "--detach"]);
    let out = text(&up);
    assert!(!up.status.success(), "{out}");
    assert!(
        out.contains(&format!("owned by uid {}", attacker())),
        "{out}"
    );
    drop(p);
    for d in [&tmp, &tmp2, &tmp3, &victims, &work] {
        let _ = std::fs::remove_dir_all(d);
    }
}

#[test]
fn the_postgres_example_and_a_user_service_work_as_root() {
    let toml = r#"
[bundle]
startup_timeout = "60s"

[services.Postgres]
kind = "postgres"
users = [{ name = "app", password = "secret" }]
databases = [{ name = "app", owner = "app" }]

[services.Clock]
command = ["sh", "-c", "id -un; date +%Y; echo READY; exec sleep 1000"]
ready = { line_contains = "READY" }
user = "nobody"
"#;
    let work = fresh_dir("pg-root", false);
    let tmp = std::env::temp_dir();
    let mut toml = toml.to_owned();
    if !is_root() {
        // Only root can switch users; the PostgreSQL half still runs.
        toml = toml.replace("user = \"nobody\"\n", "");
    }
    let p = Project::new(work.join("proj"), &tmp, &toml);
    // An up.log left readable by an older version is made private.
    std::fs::create_dir_all(p.dir.join(".hitchserve")).unwrap();
    std::fs::write(p.dir.join(".hitchserve/up.log"), "old\n").unwrap();
    std::fs::set_permissions(
        p.dir.join(".hitchserve/up.log"),
        std::fs::Permissions::from_mode(0o644),
    )
    .unwrap();
    let up = p.run(&["up", "--detach"]);
    assert!(up.status.success(), "{}", text(&up));
    // What the CLI keeps is private, but for what service users must pass through.
    let mode = |rel: &str| {
        std::fs::metadata(p.dir.join(rel))
            .unwrap()
            .permissions()
            .mode()
            & 0o7777
    };
    assert_eq!(mode(".hitchserve"), 0o711);
    assert_eq!(mode(".hitchserve/control"), 0o700);
    assert_eq!(mode(".hitchserve/up.log"), 0o600);
    assert_eq!(mode(".hitchserve/up.lock"), 0o600);
    let sql = p.run(&[
        "exec",
        "Postgres",
        "--",
        "psql",
        "-X",
        "-A",
        "-t",
        "-U",
        "app",
        "-d",
        "app",
        "-c",
        "select current_user",
    ]);
    assert!(sql.status.success(), "{}", text(&sql));
    assert_eq!(String::from_utf8_lossy(&sql.stdout).trim(), "app");
    let tt = p.run(&["time-travel", "+3660d"]);
    assert!(tt.status.success(), "{}", text(&tt));
    let now: i32 = hitchserve::jiff::ZonedDateTime::now().year().into();
    let pg_year = p.run(&[
        "exec",
        "Postgres",
        "--",
        "psql",
        "-X",
        "-A",
        "-t",
        "-U",
        "app",
        "-d",
        "app",
        "-c",
        "select extract(year from now())::int",
    ]);
    let pg_year: i32 = String::from_utf8_lossy(&pg_year.stdout)
        .trim()
        .parse()
        .unwrap();
    assert!(pg_year >= now + 9, "{pg_year}");
    let year = p.run(&["exec", "Clock", "--", "date", "+%Y"]);
    let year: i32 = String::from_utf8_lossy(&year.stdout)
        .trim()
        .parse()
        .unwrap();
    assert!(year >= now + 9, "{year}");
    if is_root() {
        let who = p.run(&["exec", "Clock", "--", "id", "-un"]);
        assert_eq!(String::from_utf8_lossy(&who.stdout).trim(), "nobody");
        // A ready-made kind's own user too (PostgreSQL runs as `postgres` under root).
        let who = p.run(&["exec", "Postgres", "--", "id", "-un"]);
        assert_eq!(String::from_utf8_lossy(&who.stdout).trim(), "postgres");
    }
    drop(p);
    let _ = std::fs::remove_dir_all(&work);
}

/// A `.hitchserve` other users can write (chmod'ed by hand, a shared checkout) is refused,
/// not quietly made private again: what they put in it meanwhile would be trusted.
#[test]
fn a_state_directory_others_can_write_is_refused_not_made_private_again() {
    let work = fresh_dir("state-open", false);
    let tmp = fresh_dir("state-open-tmp", true);
    let p = Project::new(work.join("proj"), &tmp, CLOCK);
    std::fs::create_dir(p.dir.join(".hitchserve")).unwrap();
    std::fs::set_permissions(
        p.dir.join(".hitchserve"),
        std::fs::Permissions::from_mode(0o777),
    )
    .unwrap();
    let up = p.run(&["up", "--detach"]);
    let out = text(&up);
    assert!(!up.status.success(), "{out}");
    assert!(out.contains("writable by other users"), "{out}");
    let mode = std::fs::metadata(p.dir.join(".hitchserve")).unwrap().mode();
    assert_eq!(
        mode & 0o777,
        0o777,
        "left as it is, for its owner to remove"
    );
    drop(p);
    let _ = std::fs::remove_dir_all(&work);
    let _ = std::fs::remove_dir_all(&tmp);
}

/// Files another user put in `.hitchserve` while it was open to them (the end state is made
/// here by root: chown) are never trusted: a pid in their `up.lock` is not signalled by
/// `down`, their `up.lock` and `up.log` are not used by `up`, and neither their control
/// directory nor their process listening on a socket in ours is heard as the bundle.
#[test]
fn state_files_and_sockets_of_another_user_are_never_trusted() {
    if !is_root() {
        eprintln!("skipped: the attack needs a second user, made by root");
        return;
    }
    let uid = attacker();
    let work = fresh_dir("state-planted", false);
    std::fs::set_permissions(&work, std::fs::Permissions::from_mode(0o755)).unwrap();
    let tmp = fresh_dir("state-planted-tmp", true);
    let p = Project::new(work.join("proj"), &tmp, CLOCK);
    let up = p.run(&["up", "--detach"]);
    assert!(up.status.success(), "{}", text(&up));
    assert!(p.run(&["down"]).status.success());
    let state = p.dir.join(".hitchserve");
    let plant = |name: &str, content: &str| {
        let path = state.join(name);
        let _ = std::fs::remove_file(&path);
        std::fs::write(&path, content).unwrap();
        std::os::unix::fs::chown(&path, Some(uid), None).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
    };

    // Their up.lock names our process, and they hold its lock as a running `up` does.
    let mut victim = Command::new("sleep").arg("1000").spawn().unwrap();
    plant("up.lock", &victim.id().to_string());
    // A group of its own, killed whole below (runuser passes no SIGKILL on).
    let mut holder = Command::new("runuser")
        .args(["-u", ATTACKER, "--", "flock", "-x"])
        .arg(state.join("up.lock"))
        .args(["-c", "echo LOCKED; exec sleep 1000"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .process_group(0)
        .spawn()
        .unwrap();
    let mut locked = String::new();
    std::io::BufRead::read_line(
        &mut std::io::BufReader::new(holder.stdout.take().unwrap()),
        &mut locked,
    )
    .unwrap();
    assert_eq!(locked.trim(), "LOCKED");
    let _ = p.run(&["down"]);
    assert!(
        victim.try_wait().unwrap().is_none(),
        "`down` signalled their pid"
    );
    let up = p.run(&["up", "--detach"]);
    let out = text(&up);
    assert!(!up.status.success(), "{out}");
    assert!(
        out.contains("up.lock") && out.contains(&format!("uid {uid}")),
        "{out}"
    );
    // SAFETY: a signal to the process group of a child we made.
    unsafe { libc::kill(-(holder.id() as i32), libc::SIGKILL) };
    let _ = holder.wait();
    std::fs::remove_file(state.join("up.lock")).unwrap();

    // Their up.log would get the bundle's whole console.
    plant("up.log", "");
    let up = p.run(&["up", "--detach"]);
    let out = text(&up);
    assert!(!up.status.success(), "{out}");
    assert!(
        out.contains("up.log") && out.contains(&format!("uid {uid}")),
        "{out}"
    );
    std::fs::remove_file(state.join("up.log")).unwrap();

    // A process of theirs listening on a socket in our own control directory (bound, then
    // its user changed before `listen`, which is when the kernel notes who listens).
    let control = state.join("control");
    std::fs::create_dir_all(&control).unwrap();
    std::fs::set_permissions(&control, std::fs::Permissions::from_mode(0o700)).unwrap();
    let server = format!(
        "import os, socket\n\
         s = socket.socket(socket.AF_UNIX)\n\
         s.bind({sock:?})\n\
         os.setgid({uid}); os.setuid({uid})\n\
         s.listen(8)\n\
         print('LISTENING', flush=True)\n\
         while True:\n\
         \x20   c, _ = s.accept()\n\
         \x20   c.recv(65536)\n\
         \x20   c.sendall(b'{{\"ok\": true, \"services\": [], \"PWNED\": true}}\\n')\n\
         \x20   c.close()\n",
        sock = control.join("control.sock").display().to_string(),
    );
    let mut fake = Command::new("python3")
        .args(["-c", &server])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut listening = String::new();
    std::io::BufRead::read_line(
        &mut std::io::BufReader::new(fake.stdout.take().unwrap()),
        &mut listening,
    )
    .unwrap();
    assert_eq!(listening.trim(), "LISTENING");
    let status = p.run(&["status"]);
    let out = text(&status);
    assert!(!status.status.success(), "{out}");
    assert!(!out.contains("PWNED"), "their answer was heard: {out}");
    assert!(out.contains(&format!("uid {uid}")), "{out}");
    let _ = fake.kill();
    let _ = fake.wait();

    // Their own control directory, with their socket in it.
    std::fs::remove_dir_all(&control).unwrap();
    std::fs::create_dir(&control).unwrap();
    std::os::unix::fs::chown(&control, Some(uid), None).unwrap();
    as_attacker(&format!(
        "python3 -c 'import socket; s = socket.socket(socket.AF_UNIX); s.bind(\"{}\"); s.listen(1)'",
        control.join("control.sock").display()
    ));
    let status = p.run(&["status"]);
    assert!(!status.status.success(), "{}", text(&status));
    let _ = victim.kill();
    let _ = victim.wait();
    drop(p);
    let _ = std::fs::remove_dir_all(&work);
    let _ = std::fs::remove_dir_all(&tmp);
}
