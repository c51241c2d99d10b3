//! Where keeld's log goes: the systemd journal natively (with priority and source fields)
//! when stderr is connected to it, JSON lines on stderr when `log_format = "json"`, or plain
//! text on stderr.

use std::io::Write;

use crate::config::LogFormat;

/// The log filter: `KEEL_LOG`, else `RUST_LOG`, else the config's `log_level`, else "info".
pub fn filter_spec(config_level: Option<&str>) -> String {
    std::env::var("KEEL_LOG")
        .or_else(|_| std::env::var("RUST_LOG"))
        .unwrap_or_else(|_| config_level.unwrap_or("info").to_owned())
}

/// Installs the logger. Returns where the log goes, for a first log line.
pub fn init(config_level: Option<&str>, format: LogFormat) -> &'static str {
    let spec = filter_spec(config_level);
    if format == LogFormat::Text
        && systemd_journal_logger::connected_to_journal()
        && let Ok(journal) = systemd_journal_logger::JournalLog::new()
    {
        let filter = env_filter::Builder::new().parse(&spec).build();
        let max = filter.filter();
        if log::set_boxed_logger(Box::new(env_filter::FilteredLog::new(journal, filter))).is_ok() {
            log::set_max_level(max);
            return "journald";
        }
    }
    let mut builder = env_logger::Builder::new();
    builder.parse_filters(&spec).format_timestamp_micros();
    if format == LogFormat::Json {
        builder.format(|buf, record| {
            let line = serde_json::json!({
                "ts": buf.timestamp_micros().to_string(),
                "level": record.level().as_str(),
                "target": record.target(),
                "msg": record.args().to_string(),
            });
            writeln!(buf, "{line}")
        });
    }
    let _ = builder.try_init();
    match format {
        LogFormat::Json => "stderr (json)",
        LogFormat::Text => "stderr",
    }
}
