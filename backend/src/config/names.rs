//! Values that must be one of a known set: disk names (they appear in control API paths and
//! log lines) and log filters.

/// Longest disk name.
pub const MAX_NAME: usize = 64;

/// A disk name is 1 to 64 ASCII letters, digits, `.`, `_` or `-`, starting with a letter or
/// digit: it goes into control API paths (`/v1/disks/NAME`) unencoded, so a space, `?`, `#`,
/// `%` or `/` would name another resource or none.
pub fn check_disk_name(name: &str) -> Result<(), String> {
    check_name("disk", name)
}

/// The same rule for any name that goes into an API path (`what`: "disk", "snapshot");
/// a snapshot name is at most what a container stores.
pub fn check_name(what: &str, name: &str) -> Result<(), String> {
    let max = if what == "snapshot" {
        crate::store::journal::SNAPSHOT_NAME_MAX
    } else {
        MAX_NAME
    };
    let safe = |c: char| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-');
    let starts_well = name
        .chars()
        .next()
        .is_some_and(|c| c.is_ascii_alphanumeric());
    if name.len() > max || !starts_well || !name.chars().all(safe) {
        return Err(format!(
            "{name:?} is not a {what} name: use 1 to {max} letters, digits, '.', '_' or '-', \
             starting with a letter or digit"
        ));
    }
    Ok(())
}

const LEVELS: [&str; 6] = ["off", "error", "warn", "info", "debug", "trace"];

/// A log filter in `env_logger`'s syntax, restricted: comma-separated directives, each a level
/// or `module=level` (`"info"`, `"keel_backend=debug,warn"`). A bare word that is no level
/// (`"verbose"`) would be a module filter to `env_logger` and leave keeld silent.
/// `env_logger` itself ignores what it cannot parse, which would leave keeld silent.
pub fn check_log_level(filter: &str) -> Result<(), String> {
    let bad = |why: String| {
        Err(format!(
            "\"{filter}\" is not a log filter ({why}); use one of {} or module=level, \
             comma-separated",
            LEVELS.join(", ")
        ))
    };
    if filter.contains('/') {
        return bad("regex filters are not supported".into());
    }
    if filter.trim().is_empty() {
        return bad("it is empty".into());
    }
    let is_level = |s: &str| LEVELS.contains(&s.to_ascii_lowercase().as_str());
    let is_module = |s: &str| {
        !s.is_empty()
            && s.split("::")
                .all(|p| !p.is_empty() && p.chars().all(|c| c.is_ascii_alphanumeric() || c == '_'))
    };
    for directive in filter.split(',').map(str::trim) {
        let ok = match directive.split_once('=') {
            Some((module, level)) => is_module(module.trim()) && is_level(level.trim()),
            None => is_level(directive),
        };
        if !ok {
            return bad(format!(
                "\"{directive}\" is neither a level nor module=level"
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn disk_names() {
        for good in ["vm1", "VM-1.data_2", "0", &"a".repeat(MAX_NAME)] {
            assert_eq!(check_disk_name(good), Ok(()), "{good}");
        }
        for bad in [
            "",
            "vm one",
            "vm:1?x",
            "a/b",
            "-x",
            ".hidden",
            "é",
            "a%20",
            &"a".repeat(65),
        ] {
            assert!(check_disk_name(bad).is_err(), "{bad:?} was accepted");
        }
    }

    #[test]
    fn snapshot_names_fit_a_container() {
        assert_eq!(check_name("snapshot", &"s".repeat(31)), Ok(()));
        assert!(check_name("snapshot", &"s".repeat(32)).is_err());
    }

    #[test]
    fn log_filters() {
        for good in [
            "info",
            "DEBUG",
            "keel_backend=debug",
            "warn,keel_backend::vhost=trace",
        ] {
            assert_eq!(check_log_level(good), Ok(()), "{good}");
        }
        for bad in [
            "verbose!!",
            "verbose",
            "",
            "info,",
            "keel=loud",
            "=info",
            "info/foo",
        ] {
            assert!(check_log_level(bad).is_err(), "{bad:?} was accepted");
        }
    }
}
