//! Readers from other crates that panic on some malformed input (HF tokenizers' decoder
//! deserialiser, Burn's optimizer records) are run through [`catch_quietly`], so that a
//! hostile file is an error, not a crash and not a panic message.

/// Runs `f`; a panic inside becomes None, without the panic hook's message. The hook is
/// process-wide: call this from loading code, not from a hot loop.
pub(crate) fn catch_quietly<T>(f: impl FnOnce() -> T) -> Option<T> {
    let hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(|_| {}));
    let caught = std::panic::catch_unwind(std::panic::AssertUnwindSafe(f));
    std::panic::set_hook(hook);
    caught.ok()
}
