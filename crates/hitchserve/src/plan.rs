//! From what the user declared to what will run: every definition checked and resolved,
//! before anything starts.
//!
//! Owns service names, port reservation and templates, program and directory resolution, the
//! service's environment (user, fake clock, run marker), `needs` resolution and cycles, and
//! the check that a service running as another user can reach everything it needs. A `Plan`
//! exists only once all of that passed: the runtime never re-checks a definition.
//! It starts nothing; the only things it makes are the run's per-user directories
//! (`prepare_users`), on the way to starting.

use std::collections::HashMap;
use std::ffi::{OsStr, OsString};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::error::{Error, Result};
use crate::exec::{service_env, ExecEnv};
use crate::hooks::Hook;
use crate::logs::{LogStore, Part, Source, Stream};
use crate::ports::{HeldPort, PortTable};
use crate::readiness::Ready;
use crate::rundir::RunDir;
use crate::service::{Condition, Restart, Service};
use crate::signal::Signal;
use crate::timetravel::{Clock, ClockPaths};

/// A checked, resolved bundle: what the runtime runs.
pub(crate) struct Plan {
    pub services: Vec<ServicePlan>,
    /// The fake clock's files, if any service runs on it.
    pub clock: Option<ClockPaths>,
    /// The ports reserved for the run, by (service, port name).
    pub ports: PortTable,
}

/// What the state machine needs to know of a service's definition.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Traits {
    /// Done once it has exited 0 (see `Service::one_shot`).
    pub one_shot: bool,
    /// It has a setup hook, run before it is spawned.
    pub setup: bool,
    /// It has a poststart hook.
    pub poststart: bool,
    /// Its readiness needs no check: it is ready once running.
    pub immediate: bool,
    pub stop_signal: Signal,
    /// Some service waits only for this one's process to start.
    pub started_dependents: bool,
    pub restart: Restart,
}

/// Everything needed to start one service.
pub(crate) struct ServicePlan {
    pub name: String,
    pub exec: ExecEnv,
    pub program: PathBuf,
    pub argv: Vec<OsString>,
    pub needs: Vec<(usize, Condition)>,
    pub traits: Traits,
    pub ready: Ready,
    /// Runs under the bundle's fake clock.
    pub faked: bool,
    pub setup: Option<Hook>,
    pub poststart: Option<Hook>,
    pub sources: Sources,
    /// The ready-made kind that made it, if one did.
    pub kind: Option<&'static str>,
    /// Its definition names `{run}`: the run directory must exist before it starts (it
    /// would be the log writer's to make, meanwhile).
    pub uses_run: bool,
}

/// Where a service's lines go, by what wrote them (for one start of it).
#[derive(Clone)]
pub(crate) struct Sources {
    pub out: Arc<Source>,
    pub err: Arc<Source>,
    /// (stdout, stderr) of what its setup hook runs.
    pub setup: (Arc<Source>, Arc<Source>),
    /// (stdout, stderr) of what its poststart hook runs.
    pub post: (Arc<Source>, Arc<Source>),
}

/// A service name is letters, digits, `_`, `-` and `.`, starts with a letter or digit, is
/// at most 64 characters, and isn't `Hitch`.
pub(crate) fn check_name(name: &str) -> Result<()> {
    let reason = if name.is_empty() {
        Some("it is empty")
    } else if name.len() > 64 {
        Some("it is longer than 64 characters")
    } else if !name.starts_with(|c: char| c.is_ascii_alphanumeric()) {
        Some("it must start with an ASCII letter (a-z, A-Z) or digit")
    } else if !name
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'))
    {
        Some("use only ASCII letters (a-z, A-Z), digits, `_`, `-` and `.`")
    } else if name == "Hitch" {
        Some("`Hitch` is the bundle's own name in the logs")
    } else {
        None
    };
    match reason {
        Some(reason) => Err(Error::InvalidName {
            name: name.to_owned(),
            reason,
        }),
        None => Ok(()),
    }
}

/// Reserve every declared port not reserved yet (a retried startup keeps its ports).
pub(crate) fn reserve_ports(
    defs: &[(String, Service)],
    ports: &mut PortTable,
    held: &mut Vec<HeldPort>,
) -> Result<()> {
    for (name, svc) in defs {
        for port_name in &svc.ports {
            let key = (name.clone(), port_name.clone());
            if ports.contains_key(&key) {
                continue;
            }
            let port = crate::ports::allocate(name)?;
            ports.insert(key, port.port);
            held.push(port);
        }
    }
    Ok(())
}

/// The service with its templates (`{port.x}`, `{Svc.port.x}`, `{run}`, `{service}`) filled
/// in, and whether it names `{run}`.
fn expand(name: &str, svc: &Service, run_dir: &Path, ports: &PortTable) -> Result<(Service, bool)> {
    let run = run_dir.to_string_lossy();
    let uses_run = std::cell::Cell::new(false);
    let f = |text: &str| {
        if text.contains("{run}") {
            uses_run.set(true);
        }
        if let Some(problem) = crate::ports::mistyped_template(text) {
            return Err(Error::InvalidSetting {
                service: name.to_owned(),
                problem,
            });
        }
        crate::ports::expand(text, name, ports)
            .map(|t| t.replace("{run}", &run).replace("{service}", name))
    };
    let os = |a: &OsString| -> Result<OsString> {
        match a.to_str() {
            Some(s) => Ok(f(s)?.into()),
            None => Ok(a.clone()),
        }
    };
    let mut out = svc.clone();
    out.argv = svc.argv.iter().map(os).collect::<Result<_>>()?;
    out.env = svc
        .env
        .iter()
        .map(|(k, v)| Ok((k.clone(), v.as_ref().map(os).transpose()?)))
        .collect::<Result<_>>()?;
    out.ready = svc.ready.expand(&f)?;
    if let Some(reason) = out.ready.never_passes() {
        return Err(Error::ReadinessNeverPasses {
            service: name.to_owned(),
            reason,
        });
    }
    Ok((out, uses_run.get()))
}

impl Plan {
    /// Check and resolve every definition, for a run in `run` of the (canonical) `project`.
    pub(crate) fn resolve(
        defs: &[(String, Service)],
        project: &Path,
        run: &RunDir,
        ports: &PortTable,
        time_travel: bool,
        store: &LogStore,
    ) -> Result<Plan> {
        let index: HashMap<&str, usize> = defs
            .iter()
            .enumerate()
            .map(|(i, (n, _))| (n.as_str(), i))
            .collect();
        let mut base_env: Vec<(OsString, OsString)> = std::env::vars_os().collect();
        // A user's libfaketime settings reach no service (one on real time included); a
        // service given one itself keeps it, unless it is faked (see `Clock::apply`).
        crate::timetravel::drop_foreign(&mut base_env);
        let mut lookups = Lookups::default();
        let mut services = Vec::with_capacity(defs.len());
        for (idx, (name, svc)) in defs.iter().enumerate() {
            let (svc, uses_run) = expand(name, svc, &run.path, ports)?;
            services.push(resolve_one(
                idx,
                name,
                &svc,
                project,
                &run.id,
                &base_env,
                &index,
                time_travel,
                store,
                &mut lookups,
            )?);
            if let Some(plan) = services.last_mut() {
                plan.uses_run = uses_run;
            }
        }
        // A service others wait on to complete is one-shot; one others wait on to start
        // tells the scheduler when its process is up.
        let needs: Vec<(usize, Condition)> = services
            .iter()
            .flat_map(|p| p.needs.iter().copied())
            .collect();
        for (n, condition) in needs {
            match condition {
                Condition::CompletedSuccessfully => services[n].traits.one_shot = true,
                Condition::Started => services[n].traits.started_dependents = true,
                Condition::Ready => {}
            }
        }
        let outside: Arc<std::sync::atomic::AtomicBool> = Arc::default();
        for plan in &mut services {
            plan.exec.outside = Arc::clone(&outside);
        }
        if let Some(cycle) = find_cycle(&services) {
            return Err(Error::NeedsCycle {
                cycle: cycle
                    .into_iter()
                    .map(|i| services[i].name.clone())
                    .collect(),
            });
        }
        let clock = if services.iter().any(|p| p.faked) {
            let paths = Clock::plan(&run.path)?;
            for plan in services.iter_mut().filter(|p| p.faked) {
                paths.apply(&mut plan.exec.env);
            }
            Some(paths)
        } else {
            None
        };
        Ok(Plan {
            services,
            clock,
            ports: ports.clone(),
        })
    }

    /// Whether the run directory must exist before anything starts.
    pub(crate) fn needs_run_dir(&self) -> bool {
        self.clock.is_some()
            || self
                .services
                .iter()
                .any(|p| p.exec.run_as.is_some() || p.uses_run)
    }

    /// For each service that runs as another user: its own directory `<run>/<Name>/` (mode
    /// 0700, owned by that user, inside a run directory it can only pass through), and a
    /// check that it can reach its program, its working directory, that directory and, if
    /// its clock is faked, the shim and the clock offset — so a blocked path is
    /// an error before anything starts, not a "Permission denied" later or, worse, a service
    /// that silently keeps real time (the dynamic loader only warns when it can't preload a
    /// library).
    pub(crate) fn prepare_users(&self, run_dir: &Path) -> Result<()> {
        use crate::safepath::Access;
        let clock_files: Vec<&Path> = self
            .clock
            .iter()
            .flat_map(|c| [&c.shim, &c.offset_file])
            .map(PathBuf::as_path)
            .collect();
        for plan in &self.services {
            let own = run_dir.join(&plan.name);
            let Some((uid, gid)) = plan.exec.run_as else {
                continue;
            };
            crate::safepath::make_dir_for(&own, 0o700, Some((uid, gid)))?;
            let user_name = nix::unistd::User::from_uid(nix::unistd::Uid::from_raw(uid))
                .ok()
                .flatten()
                .map_or_else(|| uid.to_string(), |u| u.name);
            let mut needed: Vec<(&Path, Access, &str)> = vec![
                (plan.program.as_path(), Access::Execute, "its program"),
                (
                    plan.exec.dir.as_path(),
                    Access::Search,
                    "its working directory",
                ),
                (
                    own.as_path(),
                    Access::Search,
                    "its directory in the run directory",
                ),
            ];
            if plan.faked {
                needed.extend(clock_files.iter().map(|p| {
                    (
                        *p,
                        Access::Read,
                        "to fake its clock (or use no_libfaketime)",
                    )
                }));
            }
            for (path, access, why) in needed {
                if !crate::safepath::user_can(path, access, uid, gid) {
                    return Err(Error::UnreachableForUser {
                        service: plan.name.clone(),
                        user: user_name,
                        path: path.to_path_buf(),
                        blocked: crate::safepath::first_blocked(path, uid, gid),
                        why: why.to_owned(),
                    });
                }
            }
        }
        Ok(())
    }
}

/// One service resolved: its directory, environment, user, program and needs.
#[expect(clippy::too_many_arguments, reason = "the one call site names each")]
fn resolve_one(
    idx: usize,
    name: &str,
    svc: &Service,
    project: &Path,
    run_id: &str,
    base_env: &[(OsString, OsString)],
    index: &HashMap<&str, usize>,
    time_travel: bool,
    store: &LogStore,
    lookups: &mut Lookups,
) -> Result<ServicePlan> {
    let Some(program) = svc.argv.first().filter(|p| !p.is_empty()) else {
        return Err(Error::EmptyCommand {
            service: name.to_owned(),
        });
    };
    let dir = match &svc.directory {
        Some(d) => project.join(d),
        None => project.to_path_buf(),
    };
    if !*lookups
        .dirs
        .entry(dir.clone())
        .or_insert_with(|| dir.is_dir())
    {
        let service = name.to_owned();
        return Err(match std::fs::metadata(&dir) {
            Ok(_) => Error::NotADirectory { service, path: dir },
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                Error::DirectoryMissing { service, path: dir }
            }
            // There, maybe, but not ours to reach (a directory we may not search).
            Err(source) => Error::Io {
                context: format!(
                    "service `{service}`: directory `{}` can't be reached: fix its \
                     permissions (or those of a directory above it), or Service::directory",
                    dir.display()
                ),
                source,
            },
        });
    }
    let mut env = service_env(base_env, &svc.env, run_id, name);
    let run_as = match &svc.user {
        None => None,
        Some(user) => {
            let found = nix::unistd::User::from_name(user)
                .ok()
                .flatten()
                .ok_or_else(|| Error::NoSuchUser {
                    service: name.to_owned(),
                    user: user.clone(),
                })?;
            if found.uid != nix::unistd::geteuid() && !nix::unistd::geteuid().is_root() {
                return Err(Error::InvalidSetting {
                    service: name.to_owned(),
                    problem: format!(
                        "it runs as user `{user}`, and only root can start a process as \
                         another user: run the tests as root, or remove its `user(..)`"
                    ),
                });
            }
            if found.uid != nix::unistd::geteuid() {
                // Across a user boundary the test's environment (CI tokens, cloud keys)
                // stays behind: the service gets its locale, PATH and time zone, and what
                // it was given.
                let inherited: Vec<(OsString, OsString)> = base_env
                    .iter()
                    .filter(|(k, _)| crosses_to_another_user(k))
                    .cloned()
                    .collect();
                env = service_env(&inherited, &svc.env, run_id, name);
            }
            for (k, v) in [
                ("HOME", found.dir.as_os_str().to_owned()),
                ("USER", user.into()),
                ("LOGNAME", user.into()),
            ] {
                // What the service was given wins (a `HOME` of its own, say).
                if svc.env.iter().any(|(key, _)| key == k) {
                    continue;
                }
                env.retain(|(key, _)| key != k);
                env.push((k.into(), v));
            }
            Some((found.uid.as_raw(), found.gid.as_raw()))
        }
    };
    let exec = ExecEnv {
        service: name.to_owned(),
        dir,
        env,
        run_as,
        // (One for the whole run: see `Plan::resolve`.)
        outside: Arc::default(),
    };
    let key = (
        program.clone(),
        exec.dir.clone(),
        exec.path_var().map(OsStr::to_owned),
    );
    let found = lookups
        .programs
        .entry(key)
        .or_insert_with(|| exec.resolve(program))
        .clone();
    let program = found.map_err(|searched| {
        let program = program.to_string_lossy().into_owned();
        match &svc.install {
            Some(install) => Error::NotInstalled {
                service: name.to_owned(),
                program,
                searched: format!("{}, and on the service's PATH", install.searched),
                install: install.command.clone(),
            },
            None => Error::CommandNotFound {
                service: name.to_owned(),
                program,
                searched,
            },
        }
    })?;
    // An `exec` readiness probe that must pass runs a program: one named bare must be on
    // the service's PATH, or the check could never pass (it was tried until the startup
    // timeout). One given by its path may be one the service makes as it starts: not
    // looked for now.
    let bare = |p: &&OsStr| !p.as_encoded_bytes().contains(&b'/');
    for probe in svc.ready.required_programs().into_iter().filter(bare) {
        if let Err(searched) = exec.resolve(probe) {
            return Err(Error::ReadinessNeverPasses {
                service: name.to_owned(),
                reason: format!(
                    "its `exec` check runs `{}`, which was not found ({searched})",
                    probe.to_string_lossy()
                ),
            });
        }
    }
    // A program it runs in turn (a cron's command) must be found as its own is.
    if let Some(other) = svc.runs_too.and_then(|at| svc.argv.get(at)) {
        let key = (
            other.clone(),
            exec.dir.clone(),
            exec.path_var().map(OsStr::to_owned),
        );
        let found = lookups
            .programs
            .entry(key)
            .or_insert_with(|| exec.resolve(other))
            .clone();
        if let Err(searched) = found {
            return Err(Error::CommandNotFound {
                service: name.to_owned(),
                program: other.to_string_lossy().into_owned(),
                searched,
            });
        }
    }
    let mut needs: Vec<(usize, Condition)> = Vec::new();
    for (need, condition) in &svc.needs {
        let Some(&n) = index.get(need.as_str()) else {
            let mut known: Vec<(&str, usize)> = index.iter().map(|(k, v)| (*k, *v)).collect();
            known.sort_by_key(|&(_, i)| i);
            return Err(Error::UnknownNeed {
                service: name.to_owned(),
                need: need.clone(),
                known: known
                    .iter()
                    .map(|(n, _)| format!("`{n}`"))
                    .collect::<Vec<_>>()
                    .join(", "),
            });
        };
        if !needs.contains(&(n, *condition)) {
            needs.push((n, *condition));
        }
    }
    let source = |part, stream| store.source(Some(idx), name, part, stream);
    Ok(ServicePlan {
        name: name.to_owned(),
        exec,
        program,
        argv: svc.argv.clone(),
        needs,
        traits: Traits {
            one_shot: svc.one_shot,
            setup: svc.setup.is_some(),
            poststart: svc.poststart.is_some(),
            immediate: svc.ready.is_immediate(),
            stop_signal: svc.stop_signal,
            started_dependents: false,
            restart: svc.restart,
        },
        ready: svc.ready.clone(),
        faked: time_travel && !svc.no_libfaketime,
        setup: svc.setup.clone(),
        poststart: svc.poststart.clone(),
        kind: svc.kind,
        uses_run: false,
        sources: Sources {
            out: source(Part::Main, Stream::Stdout),
            err: source(Part::Main, Stream::Stderr),
            setup: (
                source(Part::Setup, Stream::Stdout),
                source(Part::Setup, Stream::Stderr),
            ),
            post: (
                source(Part::Poststart, Stream::Stdout),
                source(Part::Poststart, Stream::Stderr),
            ),
        },
    })
}

/// What resolving a run found on the file system, looked up once per run for each
/// directory and each program (with its directory and `PATH`): twenty services running
/// `sh` looked along `PATH` twenty times, eight `statx` each here, a fifth of the time
/// `startup()` took before starting anything.
#[derive(Default)]
struct Lookups {
    /// Whether each directory is one.
    dirs: HashMap<PathBuf, bool>,
    /// Each (program, directory, `PATH`): where it is, or where it was looked for.
    programs: HashMap<(OsString, PathBuf, Option<OsString>), std::result::Result<PathBuf, String>>,
}

/// A cycle in `needs`, as service indices with the first repeated at the end.
fn find_cycle(plans: &[ServicePlan]) -> Option<Vec<usize>> {
    #[derive(Clone, Copy, PartialEq)]
    enum Mark {
        New,
        OnPath,
        Done,
    }
    fn visit(
        i: usize,
        plans: &[ServicePlan],
        marks: &mut [Mark],
        path: &mut Vec<usize>,
    ) -> Option<Vec<usize>> {
        marks[i] = Mark::OnPath;
        path.push(i);
        for &(n, _) in &plans[i].needs {
            match marks[n] {
                Mark::OnPath => {
                    let start = path.iter().position(|&p| p == n).unwrap_or(0);
                    let mut cycle = path[start..].to_vec();
                    cycle.push(n);
                    return Some(cycle);
                }
                Mark::New => {
                    if let Some(c) = visit(n, plans, marks, path) {
                        return Some(c);
                    }
                }
                Mark::Done => {}
            }
        }
        path.pop();
        marks[i] = Mark::Done;
        None
    }
    let mut marks = vec![Mark::New; plans.len()];
    for i in 0..plans.len() {
        if marks[i] == Mark::New {
            if let Some(c) = visit(i, plans, &mut marks, &mut Vec::new()) {
                return Some(c);
            }
        }
    }
    None
}

/// Whether a variable of the test's environment goes to a service run as another user: only
/// what locates programs and formats text, never what might be a secret.
fn crosses_to_another_user(key: &OsStr) -> bool {
    let key = key.to_string_lossy();
    matches!(
        &*key,
        "PATH" | "LANG" | "LANGUAGE" | "TZ" | "TERM" | "COLORTERM" | "NO_COLOR" | "TMPDIR"
    ) || key.starts_with("LC_")
}
