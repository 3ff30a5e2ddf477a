//! The integration tests, one binary: the real `mnister-server` on
//! ephemeral ports, driven by real clients (tonic, the `mnister` CLI,
//! Python's grpcio and tritonclient, curl-like HTTP), its real `/metrics`
//! scraped; and the trainer and quantizer end to end on the committed MNIST
//! sample. One binary links ONNX Runtime's bindings, tonic and burn once.

mod cli;
mod common;
mod confidence;
mod connections;
mod dump;
mod ensemble;
mod faults;
mod field;
mod http;
mod int8;
mod kserve;
mod limits;
mod prometheus;
mod properties;
mod python_client;
mod quantize;
mod reload;
mod replicas;
mod security;
mod server;
mod soak;
mod traces;
mod train_smoke;
