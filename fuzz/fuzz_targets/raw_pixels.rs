//! Raw grayscale of any claimed size: the size check comes before any
//! allocation, and whatever passes ends in MNIST form.
#![no_main]

use libfuzzer_sys::fuzz_target;
use mnister_core::engine::{Input, preprocess_input};
use mnister_core::preprocess::{Limits, PIXELS};

#[derive(arbitrary::Arbitrary, Debug)]
struct Raw {
    width: u64,
    height: u64,
    data: Vec<u8>,
}

fuzz_target!(|r: Raw| {
    let limits = Limits {
        max_image_bytes: 1 << 20,
        max_pixels: 1 << 20,
    };
    let input = Input::Pixels {
        width: r.width % 4096,
        height: r.height % 4096,
        data: r.data.into(),
    };
    if let Ok(img) = preprocess_input(input, &limits) {
        assert_eq!(img.len(), PIXELS);
        assert!(img.iter().all(|v| (0.0..=1.0).contains(v)));
    }
});
