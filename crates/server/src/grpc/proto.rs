//! The generated gRPC types and service stubs of `proto/lakets/v1/lakets.proto`.
#![allow(clippy::all, clippy::pedantic, missing_docs)]

tonic::include_proto!("lakets.v1");

/// For server reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] = tonic::include_file_descriptor_set!("lakets_descriptor");
