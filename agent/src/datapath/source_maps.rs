//! The source check's kernel state: each attached interface's mode per
//! policy slot (`EF_IFCONF`) and the addresses configured on the other end
//! of each interface (`EF_PEERS`).
//!
//! Ordering keeps the check closed: an interface's entry is written before
//! its programs are attached and removed after they are released (the
//! datapath checks an interface without an entry strictly, by route), and a
//! reload writes the new slot's modes before the slot flip, so that one
//! packet is never checked by one policy and judged by another.

use std::net::IpAddr;

use aya::{
    maps::{HashMap, MapData},
    Ebpf,
};
use envfence_ebpf::{family, map_names, IfConfig, PeerKey};

use super::{policy_maps::typed_map, DatapathError};
use crate::policy::SourceCheck;

/// The key of `addr` behind `ifindex` (IPv4-mapped IPv6 as IPv4, like the
/// datapath checks it).
pub fn peer_key(ifindex: u32, addr: IpAddr) -> PeerKey {
    let mut key = PeerKey {
        ifindex,
        ..PeerKey::default()
    };
    match addr {
        IpAddr::V4(a) => {
            key.family = family::V4;
            key.addr[..4].copy_from_slice(&a.octets());
        }
        IpAddr::V6(a) => match a.to_ipv4_mapped() {
            Some(v4) => {
                key.family = family::V4;
                key.addr[..4].copy_from_slice(&v4.octets());
            }
            None => {
                key.family = family::V6;
                key.addr = a.octets();
            }
        },
    }
    key
}

/// Writes `check` for `ifindex` into the given slots (both, for a new
/// interface; the inactive one, for a reload).
pub(super) fn set_mode(
    ebpf: &mut Ebpf,
    ifindex: u32,
    check: SourceCheck,
    slots: &[u32],
) -> Result<(), DatapathError> {
    let mut map: HashMap<&mut MapData, u32, IfConfig> = typed_map(ebpf, map_names::IFCONF)?;
    let mut conf = map.get(&ifindex, 0).unwrap_or_default();
    for &slot in slots {
        let i = (slot & 1) as usize;
        conf.mode[i] = check.mode.as_u8();
        conf.trust_peer[i] = u8::from(check.peer_addresses);
    }
    map.insert(ifindex, conf, 0)
        .map_err(DatapathError::map(map_names::IFCONF))
}

/// Removes everything of `ifindex` (mode and peer addresses).
pub(super) fn forget(ebpf: &mut Ebpf, ifindex: u32) -> Result<(), DatapathError> {
    {
        let mut map: HashMap<&mut MapData, u32, IfConfig> = typed_map(ebpf, map_names::IFCONF)?;
        let _ = map.remove(&ifindex);
    }
    set_peers(ebpf, ifindex, &[])
}

/// The interfaces that have an entry.
pub(super) fn configured(ebpf: &mut Ebpf) -> Result<Vec<u32>, DatapathError> {
    let map: HashMap<&mut MapData, u32, IfConfig> = typed_map(ebpf, map_names::IFCONF)?;
    Ok(map.keys().filter_map(Result::ok).collect())
}

/// Makes `addrs` the peer addresses of `ifindex`: adds the new ones first,
/// then removes the ones that are gone.
pub(super) fn set_peers(
    ebpf: &mut Ebpf,
    ifindex: u32,
    addrs: &[IpAddr],
) -> Result<(), DatapathError> {
    let mut map: HashMap<&mut MapData, PeerKey, u32> = typed_map(ebpf, map_names::PEERS)?;
    let want: Vec<PeerKey> = addrs.iter().map(|a| peer_key(ifindex, *a)).collect();
    for key in &want {
        map.insert(*key, 1, 0)
            .map_err(DatapathError::map(map_names::PEERS))?;
    }
    let stale: Vec<PeerKey> = map
        .keys()
        .filter_map(Result::ok)
        .filter(|k| k.ifindex == ifindex && !want.contains(k))
        .collect();
    for key in stale {
        let _ = map.remove(&key);
    }
    Ok(())
}

/// Adds or removes one peer address of `ifindex`.
pub(super) fn update_peer(
    ebpf: &mut Ebpf,
    ifindex: u32,
    addr: IpAddr,
    present: bool,
) -> Result<(), DatapathError> {
    let mut map: HashMap<&mut MapData, PeerKey, u32> = typed_map(ebpf, map_names::PEERS)?;
    let key = peer_key(ifindex, addr);
    if present {
        map.insert(key, 1, 0)
            .map_err(DatapathError::map(map_names::PEERS))
    } else {
        let _ = map.remove(&key);
        Ok(())
    }
}

/// Every peer address, by interface (for `status` and `explain`).
pub(super) fn peers(ebpf: &mut Ebpf) -> Result<Vec<PeerKey>, DatapathError> {
    let map: HashMap<&mut MapData, PeerKey, u32> = typed_map(ebpf, map_names::PEERS)?;
    Ok(map.keys().filter_map(Result::ok).collect())
}
