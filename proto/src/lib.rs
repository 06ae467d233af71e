//! Generated Rust for the appliance's gRPC API (package `appliance.v1`) and for the link
//! protocol between edges and hubs (package `appliance.link.v1`, framed messages on QUIC
//! streams, no gRPC).
//!
//! The `.proto` files under `proto/appliance/` are the source of truth; `build.rs` compiles
//! them with protox (no system `protoc`) into prost messages and tonic clients and servers.
//! Clients in other languages generate from the same files.

pub mod codec;

/// The `appliance.v1` package: messages, `*_client` and `*_server` modules.
pub mod v1 {
    #![allow(clippy::all, missing_debug_implementations)]
    tonic::include_proto!("appliance.v1");
}

/// The `appliance.link.v1` package: the messages of the link protocol.
pub mod link {
    pub mod v1 {
        #![allow(clippy::all, missing_debug_implementations)]
        tonic::include_proto!("appliance.link.v1");
    }
}

/// The encoded `FileDescriptorSet` of every `.proto` file, for server reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] =
    include_bytes!(concat!(env!("OUT_DIR"), "/appliance_descriptor.bin"));
