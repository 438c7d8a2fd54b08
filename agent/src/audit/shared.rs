//! The audit log shared by the event pipeline (every event record) and the
//! daemon (change records): one writer, one chain, behind a mutex.

use std::sync::{Arc, Mutex, MutexGuard};

use serde::Serialize;

use super::{AuditError, AuditWriter, Head};
use crate::events::{EventRecord, EventSink};

/// A cloneable handle on the agent's audit writer.
#[derive(Clone)]
pub struct SharedAudit(Arc<Mutex<AuditWriter>>);

impl SharedAudit {
    pub fn new(writer: AuditWriter) -> Self {
        SharedAudit(Arc::new(Mutex::new(writer)))
    }

    fn lock(&self) -> MutexGuard<'_, AuditWriter> {
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Appends one record (see [`AuditWriter::append`]); a failure is
    /// logged and announced by a later `gap` record.
    pub fn append<T: Serialize>(&self, record: &T) -> Result<u64, AuditError> {
        self.lock().append(record)
    }

    /// The last record written.
    pub fn head(&self) -> Option<Head> {
        self.lock().head()
    }

    /// The audit file being written.
    pub fn path(&self) -> std::path::PathBuf {
        self.lock().path().to_path_buf()
    }

    pub fn node(&self) -> String {
        self.lock().node().to_owned()
    }

    pub fn sync(&self) -> Result<(), AuditError> {
        self.lock().sync()
    }
}

impl EventSink for SharedAudit {
    fn record(&mut self, record: &EventRecord) -> std::io::Result<()> {
        self.lock().record(record)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        EventSink::flush(&mut *self.lock())
    }
}
