//! The `kapsule` command line: talks only to the Kapsule daemon.

pub mod cli;
mod enter;
mod follow;
mod run;

pub use run::run;
