use std::io::Write;

use aya::maps::{MapData, RingBuf};
use envfence_ebpf::Event;
use tokio::io::{unix::AsyncFd, Interest};

use super::EventContext;

/// The kernel's event ring buffer, readable from tokio.
pub struct EventStream {
    ring: AsyncFd<RingBuf<MapData>>,
}

impl EventStream {
    pub fn new(ring: RingBuf<MapData>) -> std::io::Result<Self> {
        // SAFETY: the RingBuf owns its map fd for as long as the AsyncFd
        // owns the RingBuf, and always reports that same fd.
        let ring = unsafe { AsyncFd::register_with_interest(ring, Interest::READABLE) }
            .map_err(std::io::Error::from)?;
        Ok(Self { ring })
    }

    /// Waits for events and writes each as a JSON line to `out`, forever
    /// (or until the ring buffer's fd fails).
    pub async fn run<W: Write>(&mut self, ctx: &EventContext, out: &mut W) -> std::io::Result<()> {
        loop {
            let mut guard = self.ring.readable_mut().await?;
            drain(guard.get_inner_mut(), ctx, out)?;
            guard.clear_ready();
        }
    }

    /// Writes whatever is in the ring buffer now.
    pub fn drain_now<W: Write>(
        &mut self,
        ctx: &EventContext,
        out: &mut W,
    ) -> std::io::Result<usize> {
        drain(self.ring.get_mut(), ctx, out)
    }
}

/// Writes every event currently in `ring` to `out`; returns how many.
pub fn drain<W: Write>(
    ring: &mut RingBuf<MapData>,
    ctx: &EventContext,
    out: &mut W,
) -> std::io::Result<usize> {
    let mut n = 0;
    while let Some(item) = ring.next() {
        if item.len() < std::mem::size_of::<Event>() {
            tracing::warn!("short event of {} bytes skipped", item.len());
            continue;
        }
        // SAFETY: the kernel wrote an `Event` (same ABI crate); read
        // unaligned because the ring buffer gives no alignment guarantee.
        let ev: Event = unsafe { std::ptr::read_unaligned(item.as_ptr().cast::<Event>()) };
        let record = ctx.record(&ev);
        serde_json::to_writer(&mut *out, &record)?;
        out.write_all(b"\n")?;
        n += 1;
    }
    out.flush()?;
    Ok(n)
}
