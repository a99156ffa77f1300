//! `Observer`: a look at a bundle from another thread, also while `startup` runs there.
//!
//! Owns nothing of the run: it shares the bundle's interrupt state (which learns the run
//! when startup launches it), its log sink and its clock, and gives the handles of the
//! run's services once there is a run.

use std::sync::Arc;

use crate::error::{Error, Result};
use crate::handle::ServiceHandle;
use crate::interrupt::InterruptState;
use crate::logs::{Logs, Sink};
use crate::runtime::Runtime;
use crate::timetravel::Clock;

/// A look at a [`Bundle`](crate::Bundle) from another thread, also while its `startup` runs:
/// get one with [`Bundle::observer`](crate::Bundle::observer). Cheap to clone; it keeps
/// nothing running (the bundle's shutdown and drop are as usual).
#[derive(Clone)]
pub struct Observer {
    state: Arc<InterruptState>,
    sink: Arc<Sink>,
    clock: Arc<Clock>,
}

impl Observer {
    pub(crate) fn new(state: Arc<InterruptState>, sink: Arc<Sink>, clock: Arc<Clock>) -> Observer {
        Observer { state, sink, clock }
    }

    /// The run, once startup has begun it.
    fn runtime(&self) -> Result<Arc<Runtime>> {
        match self
            .state
            .run
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .as_ref()
        {
            None => Err(Error::NotRunning),
            // It ran, and the bundle is gone (dropped).
            Some(run) => run.upgrade().ok_or(Error::ShutDown),
        }
    }

    /// The handle of the service called `name`: [`Error::NotRunning`] until startup has
    /// begun (its handle then tells whether it has started, is ready, its pid and logs),
    /// [`Error::ShutDown`] once the bundle is gone.
    pub fn service(&self, name: &str) -> Result<ServiceHandle> {
        ServiceHandle::of(&self.runtime()?, name)
    }

    /// The names of the run's services, in the order they were added (none before startup
    /// has begun).
    pub fn service_names(&self) -> Vec<String> {
        self.runtime()
            .map(|r| r.services().iter().map(|p| p.name.clone()).collect())
            .unwrap_or_default()
    }

    /// The port reserved as `name` for `service` (reserved when startup begins).
    pub fn port(&self, service: &str, name: &str) -> Result<u16> {
        let runtime = self.runtime()?;
        ServiceHandle::of(&runtime, service)?;
        runtime
            .plan
            .ports
            .get(&(service.to_owned(), name.to_owned()))
            .copied()
            .ok_or_else(|| Error::UnknownPort {
                service: service.to_owned(),
                template: format!("`port(\"{name}\")`"),
            })
    }

    /// The run's directory, once startup has begun it (see
    /// [`Bundle::run_dir`](crate::Bundle::run_dir)).
    pub fn run_dir(&self) -> Option<std::path::PathBuf> {
        self.runtime().ok().map(|r| r.run.path.clone())
    }

    /// Every line of the bundle so far (see [`Bundle::logs`](crate::Bundle::logs)).
    pub fn logs(&self) -> Logs {
        Logs::new(Arc::clone(&self.sink.store), None)
    }

    /// What time the faked services think it is (see [`Bundle::now`](crate::Bundle::now)).
    pub fn now(&self) -> jiff::Timestamp {
        self.clock.now()
    }
}

impl std::fmt::Debug for Observer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Observer")
            .field("services", &self.service_names())
            .finish()
    }
}
