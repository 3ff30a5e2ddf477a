//! Properties over generated inputs: preprocessing never panics and always
//! yields MNIST form or a typed error; the batcher answers every request with
//! its own result, whatever the batch layout and even when batches fail.

use std::sync::Arc;
use std::time::{Duration, Instant};

use mnister_core::backend::{Backend, BackendError, CLASSES};
use mnister_core::batcher::{BatchError, Batcher, BatcherConfig, Job, QueuePolicy, Traffic};
use mnister_core::preprocess::{self, Limits, MnistImage, PIXELS};
use proptest::prelude::*;

fn in_mnist_form(img: &MnistImage) -> bool {
    img.len() == PIXELS && img.iter().all(|v| v.is_finite() && (0.0..=1.0).contains(v))
}

fn limits() -> Limits {
    Limits {
        max_image_bytes: 1 << 20,
        max_pixels: 1 << 20,
    }
}

/// A valid PNG of a random grayscale picture, for mutation.
fn png_of(w: u32, h: u32, data: &[u8]) -> Vec<u8> {
    let img = image::GrayImage::from_fn(w, h, |x, y| {
        image::Luma([data[((y * w + x) as usize) % data.len()]])
    });
    let mut out = Vec::new();
    image::DynamicImage::ImageLuma8(img)
        .write_to(&mut std::io::Cursor::new(&mut out), image::ImageFormat::Png)
        .unwrap();
    out
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..4096)) {
        if let Ok(img) = preprocess::preprocess_encoded(&bytes, &limits()) {
            prop_assert!(in_mnist_form(&img));
        }
    }

    #[test]
    fn mutated_pngs_decode_or_fail_cleanly(
        w in 1u32..120, h in 1u32..120,
        data in proptest::collection::vec(any::<u8>(), 1..512),
        flips in proptest::collection::vec((any::<usize>(), any::<u8>()), 0..8),
        cut in any::<Option<usize>>(),
    ) {
        let mut png = png_of(w, h, &data);
        for (at, v) in flips {
            let i = at % png.len();
            png[i] ^= v;
        }
        if let Some(c) = cut {
            png.truncate(c % (png.len() + 1));
        }
        if let Ok(img) = preprocess::preprocess_encoded(&png, &limits()) {
            prop_assert!(in_mnist_form(&img));
        }
    }

    #[test]
    fn raw_pixels_always_mnist_form_or_error(
        w in 0u64..200, h in 0u64..200,
        data in proptest::collection::vec(any::<u8>(), 0..40_000),
    ) {
        match preprocess::preprocess_pixels(w, h, &data, &limits()) {
            Ok(img) => {
                prop_assert!(in_mnist_form(&img));
                prop_assert_eq!(data.len() as u64, w * h);
            }
            Err(e) => prop_assert!(!e.to_string().is_empty()),
        }
    }

    #[test]
    fn strokes_on_a_canvas_give_mnist_form(
        w in 8usize..300, h in 8usize..300, background in any::<bool>(),
        strokes in proptest::collection::vec((0f32..1.0, 0f32..1.0, 0f32..1.0, 0f32..1.0, 1usize..12), 1..6),
    ) {
        let (bg, ink) = if background { (255u8, 0u8) } else { (0, 255) };
        let mut gray = vec![bg; w * h];
        for (x0, y0, x1, y1, r) in strokes {
            for t in 0..100 {
                let t = t as f32 / 99.0;
                let cx = ((x0 + (x1 - x0) * t) * w as f32) as isize;
                let cy = ((y0 + (y1 - y0) * t) * h as f32) as isize;
                for dy in -(r as isize)..=r as isize {
                    for dx in -(r as isize)..=r as isize {
                        let (x, y) = (cx + dx, cy + dy);
                        if x >= 0 && y >= 0 && (x as usize) < w && (y as usize) < h {
                            gray[y as usize * w + x as usize] = ink;
                        }
                    }
                }
            }
        }
        match preprocess::preprocess_gray(w, h, &gray) {
            Ok(img) => {
                prop_assert!(in_mnist_form(&img));
                // Something is left to read: white ink on black.
                prop_assert!(img.iter().cloned().fold(0f32, f32::max) > 0.0);
            }
            // Only a canvas the strokes filled entirely is blank.
            Err(e) => prop_assert!(e.to_string().contains("blank"), "{}", e),
        }
    }

    #[test]
    fn mnist_floats_checked(values in proptest::collection::vec(-2f32..2.0, 780..790)) {
        match preprocess::check_mnist_floats(&values) {
            Ok(img) => prop_assert!(in_mnist_form(&img)),
            Err(e) => {
                let msg = e.to_string();
                prop_assert!(msg.contains("784") || msg.contains("[0, 1]"), "{}", msg);
            }
        }
    }
}

/// Answers each image with a row that names it: the image's first pixel
/// holds its id, and the row echoes it. Batches holding a poisoned image
/// (second pixel set) fail as a whole.
struct EchoBackend {
    delay: Duration,
}

impl Backend for EchoBackend {
    fn infer(&mut self, input: &[f32], n: usize) -> Result<Vec<f32>, BackendError> {
        assert_eq!(input.len(), n * PIXELS, "the batch is not n images");
        std::thread::sleep(self.delay);
        let mut out = Vec::with_capacity(n * CLASSES);
        for img in input.chunks_exact(PIXELS) {
            if img[1] > 0.0 {
                return Err(BackendError::Runtime("poisoned batch".into()));
            }
            out.push(img[0]);
            out.extend(std::iter::repeat_n(-1.0, CLASSES - 1));
        }
        Ok(out)
    }
}

fn image_with(id: usize, poison: bool) -> Box<MnistImage> {
    let mut img = Box::new([0f32; PIXELS]);
    img[0] = id as f32;
    img[1] = if poison { 1.0 } else { 0.0 };
    img
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

    #[test]
    fn batcher_answers_each_request_with_its_own_result(
        requests in 1usize..300,
        max_batch_size in 1usize..80,
        sessions in 1usize..4,
        delay_us in prop_oneof![Just(0u64), 1u64..300],
        batch_delay_us in prop_oneof![Just(0u64), 1u64..500],
        poison_every in prop_oneof![Just(None), (3usize..50).prop_map(Some)],
        policy in prop_oneof![Just(QueuePolicy::Priority), Just(QueuePolicy::Fifo)],
    ) {
        let config = BatcherConfig {
            max_batch_size,
            max_batch_delay: Duration::from_micros(batch_delay_us),
            idle_spin: Duration::ZERO,
            max_queue: 1024,
            policy,
        };
        let backends: Vec<Box<dyn Backend>> = (0..sessions)
            .map(|_| Box::new(EchoBackend { delay: Duration::from_micros(delay_us) }) as Box<dyn Backend>)
            .collect();
        let batcher = Arc::new(Batcher::start(backends, config));
        // Submit from several threads at once so batches mix callers.
        let answers: Vec<(usize, bool, Result<mnister_core::batcher::Inference, BatchError>)> =
            std::thread::scope(|s| {
                let handles: Vec<_> = (0..4)
                    .map(|t| {
                        let batcher = batcher.clone();
                        s.spawn(move || {
                            let mut waits = Vec::new();
                            for id in (t..requests).step_by(4) {
                                let poison = poison_every.is_some_and(|p| id % p == 0);
                                let (tx, rx) = tokio::sync::oneshot::channel();
                                batcher.submit(Job {
                                    image: image_with(id, poison),
                                    deadline: None,
                                    enqueued: Instant::now(),
                                    reply: tx,
                                    permit: batcher.try_admit(1).expect("room"),
                                    traffic: if id % 3 == 0 { Traffic::Bulk } else { Traffic::Interactive },
                                    trace: mnister_core::trace::JobTrace::none(),
                                });
                                waits.push((id, poison, rx));
                            }
                            waits
                                .into_iter()
                                .map(|(id, poison, rx)| (id, poison, rx.blocking_recv().expect("an answer")))
                                .collect::<Vec<_>>()
                        })
                    })
                    .collect();
                handles.into_iter().flat_map(|h| h.join().unwrap()).collect()
            });
        prop_assert_eq!(answers.len(), requests);
        for (id, poison, r) in answers {
            match r {
                Ok(inf) => {
                    prop_assert!(!poison, "poisoned request {} got an answer", id);
                    prop_assert_eq!(inf.probabilities[0], id as f32, "request {} got another's row", id);
                    prop_assert!(inf.batch_size >= 1 && inf.batch_size <= max_batch_size);
                }
                // Only requests that shared a batch with poison fail.
                Err(e) => prop_assert!(poison_every.is_some(), "request {} failed: {}", id, e),
            }
        }
        prop_assert_eq!(batcher.queue_depth(), 0);
    }
}
