//! placeholder
use super::Registry;
pub fn register(_reg: &mut Registry) {}
