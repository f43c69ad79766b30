//! Relance's decision core compiled (see `core.rs`), for the engine's hot path.

mod core;
mod json;
mod message;
mod pack;
mod state;

use pyo3::prelude::*;

#[pymodule]
fn relance_native(module: &Bound<'_, PyModule>) -> PyResult<()> {
    module.add_class::<core::NativeCore>()?;
    Ok(())
}
