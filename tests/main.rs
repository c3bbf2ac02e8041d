//! Integration tests: one binary made of modules.

mod common;
mod conformance;
mod roundtrip;
