//! Policy: the YAML model, its validation, and its compilation to map entries.
