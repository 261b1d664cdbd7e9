//! The thin OS layer: raw socket calls ([`sys`]), cross-thread wake-ups ([`doorbell`]), and
//! yielding through the runtime's driver so timers and I/O run under load ([`turn`]).
//!
//! All `unsafe` code of the crate lives here (the crate root denies it everywhere else), each
//! block with a `// SAFETY:` comment. It is needed for:
//! - tying a monoio socket's raw descriptor to a [`BorrowedFd`](std::os::fd::BorrowedFd) with the
//!   socket's lifetime (monoio exposes only `AsRawFd`), and taking it out as an `OwnedFd` for a
//!   hand-off between shards;
//! - viewing the shard's initialised scratch buffer as `MaybeUninit` for socket2's `recv`;
//! - viewing the same buffer as `MaybeUninit` for a `MSG_PEEK` (the first byte of a wss://
//!   connection);
//! - `setpriority(2)` for the Redis subscriber thread, which no safe crate wraps per thread.

pub mod doorbell;
pub mod sys;
pub mod turn;
