//! secretmon's wire format: what crosses between the kernel programs and the
//! agent, in one place.
//!
//! - [`events`]: the `#[repr(C)]` records of the ring buffer, each an
//!   [`Event`] (one [`EventHeader`], then its kind's data).
//! - [`config`]: what the agent hands the programs before attaching them
//!   (struct offsets, name rules, switches).
//! - [`names`]: the object's programs and maps, by the names the loader
//!   uses, and the kernel hooks each program attaches to.
//! - [`abi`]: the Linux constants both sides use.
//! - `user` (feature `user`, the agent's side): decoding records into
//!   [`user::KernelEvent`], and `aya::Pod` for what the agent writes into
//!   maps.
#![no_std]

#[cfg(any(feature = "user", test))]
extern crate std;

pub mod abi;
pub mod config;
pub mod env_name;
pub mod events;
pub mod names;
#[cfg(feature = "user")]
pub mod user;

pub use config::*;
pub use events::*;
