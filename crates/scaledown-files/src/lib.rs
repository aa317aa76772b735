//! What a run reads and writes on disk, for the native shells (the CLI's commands, `serve`
//! and `bench` among them, and the tests): checkpoint folders, the model files and their
//! cache, passage files, and writes that never leave half a file. The page reads none of it
//! (it gets bytes from the browser); the model crate never touches the file system.

pub mod checkpoint;
pub mod fs;
pub mod models;
pub mod passages;
