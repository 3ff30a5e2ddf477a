//! A ClassifyRequest off the wire, as the gRPC handler sees it: protobuf
//! decoding, input selection, then preprocessing.
#![no_main]

use libfuzzer_sys::fuzz_target;
use mnister_core::engine::preprocess_input;
use mnister_core::preprocess::Limits;
use mnister::proto::v1::ClassifyRequest;
use mnister::grpc::classifier::take_input;
use prost::Message;

fuzz_target!(|data: &[u8]| {
    let Ok(mut req) = ClassifyRequest::decode(data) else {
        return;
    };
    let limits = Limits {
        max_image_bytes: 1 << 20,
        max_pixels: 1 << 20,
    };
    if let Ok(input) = take_input(&mut req) {
        let _ = preprocess_input(input, &limits);
    }
});
