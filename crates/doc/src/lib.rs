//! Yjs document rooms for nimbus (work in progress).
#![forbid(unsafe_code)]

pub use yrs;
