//! Integration tests: one binary made of modules.

mod batch;
mod cli;
mod common;
mod conformance;
mod gradient_parity;
mod roundtrip;
mod sanitize;
mod search;
mod torchscript;
