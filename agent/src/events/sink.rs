//! Where event records go: anything that implements [`EventSink`].
//!
//! Every [`std::io::Write`] is a sink that prints one JSON line per record
//! (stdout, a buffer in tests); [`Tee`] sends each record to two sinks (the
//! agent's stdout and its audit log).

use std::io::Write;

use super::EventRecord;

/// A destination for event records.
pub trait EventSink {
    /// Takes one record.
    fn record(&mut self, record: &EventRecord) -> std::io::Result<()>;
    /// Called after each batch of records read from the ring buffer.
    fn flush(&mut self) -> std::io::Result<()>;
}

/// Any writer prints each record as one JSON line.
impl<W: Write + ?Sized> EventSink for W {
    fn record(&mut self, record: &EventRecord) -> std::io::Result<()> {
        // One write per line: lines written by other threads (the daemon's
        // change records on stdout) never land inside it.
        let mut line = serde_json::to_vec(record)?;
        line.push(b'\n');
        self.write_all(&line)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Write::flush(self)
    }
}

/// Sends every record to `first`, then to `second`. Both are always tried;
/// the first error is returned.
pub struct Tee<A, B> {
    pub first: A,
    pub second: B,
}

impl<A: EventSink, B: EventSink> EventSink for Tee<A, B> {
    fn record(&mut self, record: &EventRecord) -> std::io::Result<()> {
        let a = self.first.record(record);
        let b = self.second.record(record);
        a.and(b)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        let a = self.first.flush();
        let b = self.second.flush();
        a.and(b)
    }
}

/// A sink that may be absent (e.g. no `--audit-file`).
pub struct Optional<S>(pub Option<S>);

impl<S: EventSink> EventSink for Optional<S> {
    fn record(&mut self, record: &EventRecord) -> std::io::Result<()> {
        match &mut self.0 {
            Some(s) => s.record(record),
            None => Ok(()),
        }
    }

    fn flush(&mut self) -> std::io::Result<()> {
        match &mut self.0 {
            Some(s) => s.flush(),
            None => Ok(()),
        }
    }
}
