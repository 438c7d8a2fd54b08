//! Reading the kernel's event ring buffer from tokio: woken when the ring
//! has data, drained in batches into an `EventSink`.

use aya::maps::{MapData, RingBuf};
use envfence_ebpf::Event;
use tokio::io::{unix::AsyncFd, Interest};

use super::{EventContext, EventSink};

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

    /// Waits for events and gives each to `out` (a writer gets JSON lines),
    /// forever (or until the ring buffer's fd or `out` fails).
    pub async fn run<S: EventSink + ?Sized>(
        &mut self,
        ctx: &EventContext,
        out: &mut S,
    ) -> std::io::Result<()> {
        loop {
            let mut guard = self.ring.readable_mut().await?;
            off_the_runtime(|| drain(guard.get_inner_mut(), ctx, out))?;
            guard.clear_ready();
        }
    }

    /// Waits until events are there, then gives them to `out`, naming them
    /// with the context as it is at that moment (it changes on reloads).
    pub async fn next_batch<S: EventSink + ?Sized>(
        &mut self,
        ctx: &std::sync::RwLock<EventContext>,
        out: &mut S,
    ) -> std::io::Result<usize> {
        let mut guard = self.ring.readable_mut().await?;
        let n = {
            let ctx = ctx.read().unwrap_or_else(|p| p.into_inner());
            off_the_runtime(|| drain(guard.get_inner_mut(), &ctx, out))?
        };
        guard.clear_ready();
        Ok(n)
    }

    /// Writes whatever is in the ring buffer now.
    pub fn drain_now<S: EventSink + ?Sized>(
        &mut self,
        ctx: &EventContext,
        out: &mut S,
    ) -> std::io::Result<usize> {
        drain(self.ring.get_mut(), ctx, out)
    }
}

/// Runs `f`, which blocks (sinks write to stdout and files: a slow reader
/// of the agent's stdout blocks it), without holding up the runtime's other
/// tasks (the metrics server above all): on a multi-thread runtime the
/// worker hands its queued tasks to another one first.
fn off_the_runtime<R>(f: impl FnOnce() -> R) -> R {
    match tokio::runtime::Handle::try_current().map(|h| h.runtime_flavor()) {
        Ok(tokio::runtime::RuntimeFlavor::MultiThread) => tokio::task::block_in_place(f),
        _ => f(),
    }
}

/// Gives every event currently in `ring` to `out`; returns how many.
pub fn drain<S: EventSink + ?Sized>(
    ring: &mut RingBuf<MapData>,
    ctx: &EventContext,
    out: &mut S,
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
        out.record(&record)?;
        n += 1;
    }
    EventSink::flush(out)?;
    Ok(n)
}
