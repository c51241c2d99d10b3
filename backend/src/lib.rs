//! Keel's server side. The data path reads top-down through the modules:
//! `vhost` (socket, virtqueues, request parsing) -> `engine` (null, raw, keel)
//! -> `store` (the log-structured core) -> `device` (file, mirror).

pub mod config;
pub mod control;
pub mod device;
pub mod engine;
pub mod nbd;
pub mod store;
pub mod vhost;
