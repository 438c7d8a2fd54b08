//! What /healthz and /readyz answer.

use std::sync::{
    atomic::{AtomicBool, Ordering},
    Arc, RwLock,
};

use crate::datapath::CounterReader;

/// Liveness and readiness, shared between the agent loop and the server.
pub struct Health {
    counters: Option<Arc<CounterReader>>,
    ready: AtomicBool,
    why_not_ready: RwLock<String>,
}

impl Health {
    /// `counters`: read on every /healthz to prove the maps are reachable.
    pub fn new(counters: Option<Arc<CounterReader>>) -> Self {
        Self {
            counters,
            ready: AtomicBool::new(false),
            why_not_ready: RwLock::new(String::from("starting")),
        }
    }

    /// Ready: a policy is loaded and every matching interface is attached.
    pub fn set_ready(&self, ready: bool, why_not: impl Into<String>) {
        *self
            .why_not_ready
            .write()
            .unwrap_or_else(|p| p.into_inner()) = why_not.into();
        self.ready.store(ready, Ordering::SeqCst);
    }

    /// (ok, text) for /healthz: the process answers and the maps are readable.
    pub fn live(&self) -> (bool, String) {
        match &self.counters {
            Some(c) => match c.stats() {
                Ok(_) => (true, "ok\n".into()),
                Err(e) => (false, format!("kernel maps unreachable: {e}\n")),
            },
            None => (true, "ok\n".into()),
        }
    }

    /// (ok, text) for /readyz.
    pub fn ready(&self) -> (bool, String) {
        if self.ready.load(Ordering::SeqCst) {
            (true, "ready\n".into())
        } else {
            let why = self
                .why_not_ready
                .read()
                .unwrap_or_else(|p| p.into_inner())
                .clone();
            (false, format!("not ready: {why}\n"))
        }
    }
}
