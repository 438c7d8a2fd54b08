//! A bounded in-memory store of recent events, for the CLI (`envfence
//! flows`): the newest `capacity` records, and a live feed for `--follow`.

use std::{
    collections::VecDeque,
    sync::{Arc, Mutex},
};

use tokio::sync::broadcast;

use crate::events::{EventRecord, EventSink};

/// Default number of events kept.
pub const DEFAULT_CAPACITY: usize = 10_000;

/// Recent events, oldest first, each with a sequence number.
pub struct EventStore {
    inner: Mutex<Inner>,
    feed: broadcast::Sender<(u64, EventRecord)>,
}

struct Inner {
    capacity: usize,
    next_seq: u64,
    events: VecDeque<(u64, EventRecord)>,
}

impl EventStore {
    pub fn new(capacity: usize) -> Arc<Self> {
        let (feed, _) = broadcast::channel(1024);
        Arc::new(Self {
            inner: Mutex::new(Inner {
                capacity: capacity.max(1),
                next_seq: 0,
                events: VecDeque::new(),
            }),
            feed,
        })
    }

    pub fn push(&self, record: EventRecord) {
        let mut inner = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        let seq = inner.next_seq;
        inner.next_seq += 1;
        if inner.events.len() == inner.capacity {
            inner.events.pop_front();
        }
        inner.events.push_back((seq, record.clone()));
        // No subscriber is fine.
        let _ = self.feed.send((seq, record));
    }

    /// The stored events, oldest first.
    pub fn snapshot(&self) -> Vec<(u64, EventRecord)> {
        let inner = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        inner.events.iter().cloned().collect()
    }

    /// Events pushed from now on (a lagging subscriber is told how many it
    /// missed by `broadcast::error::RecvError::Lagged`).
    pub fn subscribe(&self) -> broadcast::Receiver<(u64, EventRecord)> {
        self.feed.subscribe()
    }

    /// Number of events ever pushed.
    pub fn total(&self) -> u64 {
        self.inner
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .next_seq
    }
}

/// The store as an event sink.
pub struct StoreSink(pub Arc<EventStore>);

impl EventSink for StoreSink {
    fn record(&mut self, record: &EventRecord) -> std::io::Result<()> {
        self.0.push(record.clone());
        Ok(())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}
