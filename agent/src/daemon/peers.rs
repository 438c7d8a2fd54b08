//! The daemon's half of the source check's peer addresses: every attached
//! interface that is one end of a veth (or netkit) pair has the addresses of
//! its other end in the datapath's `EF_PEERS`, written before the interface
//! is attached and kept current from the [`PeerWatcher`]'s events.

use crate::netwatch::{Link, PeerEvent, PeerWatcher};

use super::Agent;

impl Agent {
    /// Starts following `link`'s peer (if it has one) and writes its
    /// addresses into the datapath. Called before `link` is attached, so
    /// that no honest packet of a pod behind a bridge is refused.
    pub(super) fn track_peer(&mut self, link: &Link) {
        let (Some(watcher), Some(peer)) = (self.peers.as_mut(), link.peer) else {
            return;
        };
        match watcher.track(link.ifindex, peer) {
            Ok(addrs) => {
                if let Err(e) = self.dp.set_peer_addresses(link.ifindex, &addrs) {
                    tracing::error!(interface = %link.name, "writing peer addresses: {e}");
                } else {
                    tracing::debug!(interface = %link.name, ?addrs, "peer addresses");
                }
            }
            Err(e) => tracing::warn!(
                interface = %link.name,
                "peer addresses unknown ({e}): its strict source check accepts routes only"
            ),
        }
    }

    /// Stops following the peer of `ifindex` (its entries go with the
    /// datapath's `forget`/`detach`).
    pub(super) fn untrack_peer(&mut self, ifindex: u32) {
        if let Some(w) = self.peers.as_mut() {
            w.untrack(ifindex);
        }
    }

    /// Applies one change of a peer's addresses.
    pub(super) fn on_peer_event(&mut self, event: PeerEvent) {
        let result = match &event {
            PeerEvent::Added { ifindex, addr } => {
                self.dp.update_peer_address(*ifindex, *addr, true)
            }
            PeerEvent::Removed { ifindex, addr } => {
                self.dp.update_peer_address(*ifindex, *addr, false)
            }
            PeerEvent::Resync(all) => {
                let attached: Vec<u32> = self.dp.attachments().map(|a| a.ifindex).collect();
                all.iter()
                    .filter(|(i, _)| attached.contains(i))
                    .try_for_each(|(i, addrs)| self.dp.set_peer_addresses(*i, addrs))
            }
        };
        if let Err(e) = result {
            tracing::error!("applying a peer address change ({event:?}): {e}");
        }
    }
}

/// The watcher's next event, or never when there is no watcher.
pub(super) async fn next_peer_event(
    w: &mut Option<PeerWatcher>,
) -> Result<PeerEvent, crate::netwatch::peers::PeerError> {
    match w {
        Some(w) => w.next().await,
        None => std::future::pending().await,
    }
}
