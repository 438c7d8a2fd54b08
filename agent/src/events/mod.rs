//! Flow events: read from the kernel's ring buffer and written as one JSON
//! line each.

mod reader;
mod record;

pub use reader::{drain, EventStream};
pub use record::{EventContext, EventRecord};
