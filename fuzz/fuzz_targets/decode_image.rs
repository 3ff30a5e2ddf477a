//! Encoded bytes through the server's decoder and preprocessing: MNIST form
//! or a typed error, never a panic, a hang or a huge allocation.
#![no_main]

use libfuzzer_sys::fuzz_target;
use mnister_core::engine::{Input, preprocess_input};
use mnister_core::preprocess::{Limits, PIXELS};

fuzz_target!(|data: &[u8]| {
    let limits = Limits {
        max_image_bytes: 1 << 20,
        max_pixels: 4_000_000,
    };
    if let Ok(img) = preprocess_input(Input::Image(bytes::Bytes::copy_from_slice(data)), &limits) {
        assert_eq!(img.len(), PIXELS);
        assert!(img.iter().all(|v| (0.0..=1.0).contains(v)));
    }
});
