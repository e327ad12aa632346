//! What the tests, the demo and the benchmarks run on: a throwaway PostgreSQL cluster built
//! from the local server binaries ([`embedded`]). Nothing here is in the service's path.

pub mod embedded;

// The ground this crate stands on, under the names its modules use.
use lakets_postgres::{db, error, ident};
