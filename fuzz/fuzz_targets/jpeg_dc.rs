//! JPEG bytes straight into the DC-only decoder (the 1/8 path for photos,
//! which `decode_image` reaches only with frames of 2048 px and more): a
//! plane of the frame's block count, "not handled" or a typed error, never
//! a panic, a hang or a huge allocation. Seeds: tests/data/jpeg/dc-*.jpg.
#![no_main]

use libfuzzer_sys::fuzz_target;
use mnister_core::jpeg::dc::decode_dc;

fuzz_target!(|data: &[u8]| {
    if let Ok(Some((w, h, plane))) = decode_dc(data, 4_000_000) {
        assert_eq!(plane.len() as u64, u64::from(w) * u64::from(h));
        assert!(w >= 1 && h >= 1);
    }
});
