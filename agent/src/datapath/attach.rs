use aya::programs::links::FdLink;

use super::DatapathError;

/// envfence's two tcx links on one interface.
#[derive(Debug)]
pub struct Attachment {
    pub ifname: String,
    pub ifindex: u32,
    pub(super) ingress: FdLink,
    pub(super) egress: FdLink,
}

/// Every interface of the current network namespace: (name, ifindex).
pub fn list_interfaces() -> Result<Vec<(String, u32)>, DatapathError> {
    let list = nix::net::if_::if_nameindex().map_err(|e| DatapathError::Interface {
        ifname: String::from("*"),
        message: format!("listing interfaces failed: {e}"),
    })?;
    Ok(list
        .iter()
        .map(|i| (i.name().to_string_lossy().into_owned(), i.index()))
        .collect())
}
