//! A KServe ModelInferRequest off the wire: tensor validation (names,
//! datatypes, shapes, contents) must refuse what it cannot use, and what it
//! accepts must preprocess or fail cleanly.
#![no_main]

use libfuzzer_sys::fuzz_target;
use mnister_core::engine::preprocess_input;
use mnister_core::preprocess::Limits;
use mnister::proto::inference::ModelInferRequest;
use mnister::grpc::kserve::decode_inputs;
use prost::Message;

fuzz_target!(|data: &[u8]| {
    let Ok(mut req) = ModelInferRequest::decode(data) else {
        return;
    };
    let limits = Limits {
        max_image_bytes: 1 << 20,
        max_pixels: 1 << 20,
    };
    if let Ok(inputs) = decode_inputs(&mut req) {
        for input in inputs.into_iter().take(16) {
            let _ = preprocess_input(input, &limits);
        }
    }
});
