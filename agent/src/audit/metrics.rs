//! Audit metrics, read at every scrape: the chain head (seq and hash, so
//! that Prometheus keeps an off-node anchor of the chain every scrape) and
//! the shipping state.
//!
//! The hash is exported as [`HASH_PARTS`] gauges of 13 hex digits (52 bits,
//! exact in a float64; the last part 12), `part="0"` first: the full
//! 256 bits with a constant number of series. Seq and hash are read under
//! one lock, so a scrape always holds a consistent pair.

use std::sync::{Arc, Mutex};

use prometheus::{
    core::{Collector, Desc},
    proto::MetricFamily,
    IntGaugeVec, Opts,
};

use super::{ship::ShipState, Head, SharedAudit};

/// Hex digits per hash part.
pub const PART_DIGITS: usize = 13;
/// Parts of a 64-digit hash.
pub const HASH_PARTS: usize = 64_usize.div_ceil(PART_DIGITS);

pub const HEAD_SEQ: &str = "envfence_audit_head_seq";
pub const HEAD_HASH: &str = "envfence_audit_head_hash";

/// The hash as part values.
pub fn hash_parts(hash: &str) -> Option<Vec<u64>> {
    if hash.len() != 64 {
        return None;
    }
    (0..HASH_PARTS)
        .map(|i| {
            let end = ((i + 1) * PART_DIGITS).min(64);
            u64::from_str_radix(hash.get(i * PART_DIGITS..end)?, 16).ok()
        })
        .collect()
}

/// The hash from part values (as Prometheus returns them).
pub fn hash_from_parts(parts: &[u64]) -> Option<String> {
    if parts.len() != HASH_PARTS {
        return None;
    }
    let mut out = String::with_capacity(64);
    for (i, p) in parts.iter().enumerate() {
        let width = if i + 1 == HASH_PARTS {
            64 - PART_DIGITS * (HASH_PARTS - 1)
        } else {
            PART_DIGITS
        };
        let s = format!("{p:0width$x}");
        if s.len() != width {
            return None;
        }
        out.push_str(&s);
    }
    Some(out)
}

/// Reads the audit writer and the shipper at scrape time.
pub struct AuditCollector {
    audit: SharedAudit,
    ship: Option<Arc<ShipState>>,
    node: String,
    head_seq: IntGaugeVec,
    head_hash: IntGaugeVec,
    ship_sent: IntGaugeVec,
    ship_confirmed: IntGaugeVec,
    ship_backlog: IntGaugeVec,
    ship_connected: IntGaugeVec,
    ship_errors: IntGaugeVec,
    ship_resent: IntGaugeVec,
    ship_lost: IntGaugeVec,
    /// Serialises scrapes: the gauges are refilled on each.
    lock: Mutex<()>,
}

fn gauge(name: &str, help: &str, labels: &[&str]) -> Result<IntGaugeVec, prometheus::Error> {
    IntGaugeVec::new(Opts::new(name, help), labels)
}

fn as_i64(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

impl AuditCollector {
    pub fn new(
        audit: SharedAudit,
        ship: Option<Arc<ShipState>>,
    ) -> Result<Self, prometheus::Error> {
        let node = audit.node();
        Ok(AuditCollector {
            audit,
            ship,
            node,
            head_seq: gauge(HEAD_SEQ, "Seq of the last record of the audit chain (with envfence_audit_head_hash: an anchor of the chain kept off the node).", &["node"])?,
            head_hash: gauge(HEAD_HASH, "Hash of the last record of the audit chain, in parts of 13 hex digits (part 0 first), read with envfence_audit_head_seq in one scrape.", &["node", "part"])?,
            ship_sent: gauge("envfence_audit_ship_sent_seq", "Seq of the last audit record sent to the syslog receiver.", &["node"])?,
            ship_confirmed: gauge("envfence_audit_ship_confirmed_seq", "Seq of the last audit record the syslog receiver confirmed reading (persisted; shipping resumes after it).", &["node"])?,
            ship_backlog: gauge("envfence_audit_ship_backlog_records", "Audit records written but not yet sent to the syslog receiver.", &["node"])?,
            ship_connected: gauge("envfence_audit_ship_connected", "1 while connected to the syslog receiver.", &["node"])?,
            ship_errors: gauge("envfence_audit_ship_errors_total", "Failed connections to the syslog receiver (each is retried).", &["node"])?,
            ship_resent: gauge("envfence_audit_ship_resent_records_total", "Audit records sent again after a connection broke before their delivery was confirmed.", &["node"])?,
            ship_lost: gauge("envfence_audit_ship_lost_records_total", "Audit records rotated away before they could be shipped.", &["node"])?,
            lock: Mutex::new(()),
        })
    }

    fn fill(&self, head: Option<&Head>) {
        let node = self.node.as_str();
        self.head_hash.reset();
        if let Some(h) = head {
            self.head_seq.with_label_values(&[node]).set(as_i64(h.seq));
            for (i, p) in hash_parts(&h.hash)
                .unwrap_or_default()
                .into_iter()
                .enumerate()
            {
                self.head_hash
                    .with_label_values(&[node, &i.to_string()])
                    .set(as_i64(p));
            }
        }
        if let Some(s) = &self.ship {
            let set = |g: &IntGaugeVec, v: u64| g.with_label_values(&[node]).set(as_i64(v));
            let sent = s.sent();
            if let Some(v) = sent {
                set(&self.ship_sent, v);
            }
            if let Some(v) = s.confirmed() {
                set(&self.ship_confirmed, v);
            }
            let written = head.map_or(0, |h| h.seq + 1);
            set(
                &self.ship_backlog,
                written.saturating_sub(sent.map_or(0, |v| v + 1)),
            );
            set(
                &self.ship_connected,
                u64::from(s.connected.load(std::sync::atomic::Ordering::Relaxed)),
            );
            set(
                &self.ship_errors,
                s.errors.load(std::sync::atomic::Ordering::Relaxed),
            );
            set(
                &self.ship_resent,
                s.resent.load(std::sync::atomic::Ordering::Relaxed),
            );
            set(
                &self.ship_lost,
                s.lost.load(std::sync::atomic::Ordering::Relaxed),
            );
        }
    }

    fn all(&self) -> Vec<&IntGaugeVec> {
        let mut v = vec![&self.head_seq, &self.head_hash];
        if self.ship.is_some() {
            v.extend([
                &self.ship_sent,
                &self.ship_confirmed,
                &self.ship_backlog,
                &self.ship_connected,
                &self.ship_errors,
                &self.ship_resent,
                &self.ship_lost,
            ]);
        }
        v
    }
}

impl Collector for AuditCollector {
    fn desc(&self) -> Vec<&Desc> {
        self.all().into_iter().flat_map(|g| g.desc()).collect()
    }

    fn collect(&self) -> Vec<MetricFamily> {
        let _one = self.lock.lock().unwrap_or_else(|p| p.into_inner());
        // One head for the whole scrape.
        let head = self.audit.head();
        self.fill(head.as_ref());
        self.all().into_iter().flat_map(|g| g.collect()).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hash_parts_round_trip_exactly_in_floats() {
        let h = "f".repeat(64);
        let parts = hash_parts(&h).unwrap();
        assert_eq!(parts.len(), 5);
        for p in &parts {
            // Exact as a float64, printed and parsed back.
            let f = *p as f64;
            assert_eq!(f.to_string().parse::<f64>().unwrap() as u64, *p);
        }
        assert_eq!(hash_from_parts(&parts).unwrap(), h);
        let h2 = "0123456789abcdef".repeat(4);
        assert_eq!(hash_from_parts(&hash_parts(&h2).unwrap()).unwrap(), h2);
    }
}
