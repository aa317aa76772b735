#![no_main]
//! Any bytes: the GGUF reader returns Ok or Err, never panics or over-allocates; every tensor
//! it accepts can be dequantised.
use libfuzzer_sys::fuzz_target;
use scaledown_model::weights::gguf::GgufFile;

fuzz_target!(|data: &[u8]| {
    if let Ok(file) = GgufFile::parse(data) {
        for info in &file.tensors {
            let t = file.dequantize(info);
            assert_eq!(t.values.len(), t.shape.iter().product::<usize>());
        }
    }
});
