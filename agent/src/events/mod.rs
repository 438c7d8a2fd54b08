//! Flow events: read from the kernel's ring buffer and written as one JSON
//! line each.

mod reader;
mod record;
mod sink;

pub use reader::{drain, EventStream};
pub use record::{EventContext, EventRecord, SlotNames, SourceCheckRecord, SOURCE_CHECK_RULE};
pub use sink::{EventSink, Optional, Tee};
