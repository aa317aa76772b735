#![no_main]
//! Any bytes: the safetensors reader returns Ok or Err, never panics.
use libfuzzer_sys::fuzz_target;
use scaledown_model::weights::WeightSource;
use scaledown_model::weights::safetensors::SafetensorsFile;

fuzz_target!(|data: &[u8]| {
    if let Ok(file) = SafetensorsFile::parse(data) {
        for name in file.names() {
            if let Ok(t) = file.tensor(&name) {
                assert_eq!(t.values.len(), t.shape.iter().product::<usize>());
            }
        }
    }
});
