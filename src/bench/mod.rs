//! `lakets bench`: end-to-end measurements on an embedded PostgreSQL, each figure measured
//! against a baseline or a target in the same run.

pub mod catchup;
pub mod freshness;

pub use catchup::{CatchupOptions, CatchupReport, catchup, catchup_table};
pub use freshness::{FreshnessOptions, FreshnessReport, freshness, freshness_table};
