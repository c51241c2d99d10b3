//! Keel's server side. The data path reads top-down through the modules:
//! `vhost` (socket, virtqueues, request parsing) -> `engine` (null, raw, keel)
//! -> `store` (the log-structured core) -> `device` (file, mirror).

pub mod cli_docs;
pub mod config;
pub mod control;
pub mod daemon;
pub mod device;
pub mod engine;
pub mod import;
pub mod nbd;
pub mod qos;
pub mod service;
pub mod socket;
pub mod store;
#[cfg(any(test, feature = "testing"))]
pub mod testing;
pub mod vhost;
