//! ScaleDown's browser playground. `trunk build --release` (from the repository root) turns
//! this crate into a static page; `playground.rs` holds the work, the other modules are the
//! browser's glue.

#![cfg_attr(not(target_arch = "wasm32"), allow(dead_code))]

mod playground;

#[cfg(target_arch = "wasm32")]
mod app;
#[cfg(target_arch = "wasm32")]
mod charts;
#[cfg(target_arch = "wasm32")]
mod dom;

#[cfg(target_arch = "wasm32")]
fn main() {
    app::start();
}

#[cfg(not(target_arch = "wasm32"))]
mod bench;

#[cfg(not(target_arch = "wasm32"))]
fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.first().map(String::as_str) {
        Some("bench") => {
            if let Err(e) = bench::run(&args[1..]) {
                eprintln!("error: {e}");
                std::process::exit(2);
            }
        }
        _ => eprintln!(
            "scaledown-web runs in the browser: `trunk serve` from the repository root.\n\
             Natively: `scaledown-web bench [--backend flex|wgpu] [--questions N] [--steps N] \
             [--data web/data/squad_sample.json]` times the page's tiny-model work."
        ),
    }
}
