//! One `[[disk]]` table outside a config file: the body of `POST /v1/disks`, checked by the same
//! code and with the same messages as the file's tables.

use std::path::Path;

use super::{Config, ConfigError, DiskConfig};

/// Where a disk added through the API says its keys came from, in messages.
const ORIGIN: &str = "disk";

/// Checks `table` (a JSON object with the keys of a `[[disk]]` table) as the config file's
/// tables are checked; relative paths resolve against `base`. The error names the key at fault.
pub fn disk_from_json(table: &serde_json::Value, base: &Path) -> Result<DiskConfig, String> {
    if !table.is_object() {
        return Err("the body must be a JSON object with the keys of a [[disk]] table".into());
    }
    let toml_table = toml::Value::try_from(table)
        .map_err(|e| format!("the body has no TOML equivalent: {e}"))?;
    let mut file = toml::Table::new();
    file.insert("disk".into(), toml::Value::Array(vec![toml_table]));
    let text = toml::to_string(&file).map_err(|e| format!("cannot encode the table: {e}"))?;
    let config = Config::parse(&text, Path::new(ORIGIN), base).map_err(|e| match e {
        // The line is the generated table's: only the key means something to the caller.
        ConfigError::Invalid { key, message, .. } => format!("`{key}`: {message}"),
        ConfigError::Syntax { message, .. } => message,
        other => other.to_string(),
    })?;
    config
        .disks
        .into_iter()
        .next()
        .ok_or_else(|| "no disk in the body".into())
}

/// Reads a file holding exactly one `[[disk]]` table (for `keel disk add --file`) into the
/// JSON object `POST /v1/disks` takes, relative paths made absolute against the file's
/// directory.
pub fn disk_table_from_file(path: &Path) -> Result<serde_json::Value, String> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    let mut file: toml::Table =
        toml::from_str(&text).map_err(|e| format!("{}: {e}", path.display()))?;
    let one = match file.remove("disk") {
        Some(toml::Value::Array(mut tables)) if tables.len() == 1 && file.is_empty() => {
            tables.remove(0)
        }
        _ => {
            return Err(format!(
                "{}: expected exactly one [[disk]] table and nothing else",
                path.display()
            ));
        }
    };
    let parent = path.parent().filter(|p| !p.as_os_str().is_empty());
    let dir = std::path::absolute(parent.unwrap_or(Path::new(".")))
        .map_err(|e| format!("{}: {e}", path.display()))?;
    let mut json = serde_json::to_value(&one).map_err(|e| format!("{}: {e}", path.display()))?;
    absolute_paths(&mut json, &dir);
    Ok(json)
}

/// Makes the path keys of a `[[disk]]` table (`socket`, `path`, `mirror`) absolute against
/// `dir`, so the daemon reads them as the caller meant.
pub fn absolute_paths(table: &mut serde_json::Value, dir: &Path) {
    let join = |v: &mut serde_json::Value| {
        if let Some(s) = v.as_str() {
            *v = dir.join(s).display().to_string().into();
        }
    };
    for key in ["socket", "path"] {
        if let Some(v) = table.get_mut(key) {
            join(v);
        }
    }
    if let Some(serde_json::Value::Array(list)) = table.get_mut("mirror") {
        list.iter_mut().for_each(join);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn a_table_is_checked_as_in_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let d = disk_from_json(
            &json!({"name": "a", "socket": "a.sock", "engine": "null", "size": "1M",
                    "iops_limit": 100}),
            dir.path(),
        )
        .unwrap();
        assert_eq!(d.socket, dir.path().join("a.sock"));
        assert_eq!(d.size, Some(1 << 20));
        assert_eq!(d.limits.iops_limit, 100);

        let unknown = disk_from_json(
            &json!({"name": "a", "socket": "a.sock", "engine": "null", "size": 1, "sise": 2}),
            dir.path(),
        )
        .unwrap_err();
        assert!(unknown.contains("unknown field `sise`"), "{unknown}");
        let bad = disk_from_json(
            &json!({"name": "a", "socket": "a.sock", "engine": "null", "size": "1M",
                    "queues": 0}),
            dir.path(),
        )
        .unwrap_err();
        assert_eq!(bad, "`queues`: 0 is outside 1..=64");
        assert!(disk_from_json(&json!([1]), dir.path()).is_err());
    }

    #[test]
    fn a_file_with_one_table_becomes_a_body_with_absolute_paths() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("d.toml");
        std::fs::write(
            &f,
            "[[disk]]\nname = \"a\"\nsocket = \"a.sock\"\nengine = \"raw\"\npath = \"a.img\"\n",
        )
        .unwrap();
        let body = disk_table_from_file(&f).unwrap();
        assert_eq!(
            body["socket"],
            json!(dir.path().join("a.sock").display().to_string())
        );
        std::fs::write(&f, "[server]\n[[disk]]\nname = \"a\"\n").unwrap();
        assert!(
            disk_table_from_file(&f)
                .unwrap_err()
                .contains("exactly one")
        );
    }
}
