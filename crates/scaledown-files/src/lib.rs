//! What a run reads and writes on disk, for every native shell (the CLI's commands, `serve`,
//! `bench`, the tests): checkpoint folders, the model files and their cache, passage files,
//! and writes that never leave half a file. The page reads none of it; the model crate never
//! touches the file system.

pub mod checkpoint;
pub mod fs;
pub mod models;
pub mod passages;
