//! Integration tests: one binary made of modules.

mod cli;
mod common;
mod conformance;
mod fuzz;
mod gradient_parity;
mod hostile;
mod roundtrip;
mod sanitize;
mod sarif;
mod scan;
mod search;
mod shapes;
mod torchscript;
