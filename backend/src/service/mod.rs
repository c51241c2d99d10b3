//! Running under a service manager: systemd readiness and watchdog notifications, socket
//! activation, and where the logs go (journald, JSON lines or plain text).

pub mod activation;
pub mod logging;
pub mod notify;

pub use activation::Activation;
pub use notify::{Notifier, Watchdog};
