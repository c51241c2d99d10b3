//! Keel's server side. The data path reads top-down through the modules:
//! `vhost` (socket, virtqueues, request parsing) -> `engine` (null, raw, keel)
//! -> `store` (the log-structured core) -> `device` (file, mirror).

pub mod device;
pub mod store;
