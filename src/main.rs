//! `chat4all-gateway`: the program is [`chat4all_gateway::gateway::run`]; this file only picks
//! the allocator and calls it.

#![deny(unsafe_code, unsafe_op_in_unsafe_fn)]
#![warn(clippy::undocumented_unsafe_blocks)]

use std::process::ExitCode;

#[cfg(feature = "mimalloc")]
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    chat4all_gateway::gateway::run()
}
