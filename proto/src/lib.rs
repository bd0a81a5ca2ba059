//! The model service's gRPC contracts, generated from `proto/` at build time (no `protoc`):
//!
//! - [`prediction`]: the setups' own `prediction.PredictionService` (Predict, PredictBatch,
//!   Health);
//! - [`inference`]: the Open Inference Protocol's `inference.GRPCInferenceService`, field for
//!   field as published, so Triton's and KServe's clients work;
//! - [`FILE_DESCRIPTOR_SET`]: both files' descriptors, for server reflection.
//!
//! Servers and clients are both generated: the service serves them, the xtask's gates, smoke
//! checks and load generator call them.

/// The setups' own API: `prediction.PredictionService`.
pub mod prediction {
    tonic::include_proto!("prediction");
}

/// The Open Inference Protocol over gRPC: `inference.GRPCInferenceService`.
pub mod inference {
    tonic::include_proto!("inference");
}

/// The encoded `FileDescriptorSet` of every proto file here.
pub const FILE_DESCRIPTOR_SET: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/descriptors.bin"));

/// The metadata key carrying the serving model's version on every response.
pub const MODEL_VERSION_METADATA: &str = "x-model-version";
