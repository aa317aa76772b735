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
fn main() {
    eprintln!("scaledown-web runs in the browser: `trunk serve` from the repository root");
}
