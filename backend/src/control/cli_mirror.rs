//! `keel mirror ...`: a mirrored disk's components as a table, and the component operations.

use super::cli::{MirrorCmd, api, disk_path};
use super::client::ControlClient;
use super::output::{Align, Table, print_json};
use keel_protocol::control::MirrorOpBody;
use std::path::Path;

pub fn mirror(c: &ControlClient, cmd: MirrorCmd) -> Result<(), String> {
    let op = |disk: &str, n: usize, op: &str, path: Option<&Path>| -> Result<(), String> {
        let body = MirrorOpBody {
            path: path.map(|p| p.display().to_string()),
        };
        let _: serde_json::Value = c
            .post(&format!("{}/mirror/{n}/{op}", disk_path(disk)), &body)
            .map_err(api)?;
        Ok(())
    };
    let status = |disk: &str| -> Result<serde_json::Value, String> {
        c.get(&format!("{}/mirror", disk_path(disk))).map_err(api)
    };
    match cmd {
        MirrorCmd::Status { disk, json } => {
            let s = status(&disk)?;
            if json {
                return print_json(&s);
            }
            print!("{}", mirror_table(&s).render());
            Ok(())
        }
        MirrorCmd::Offline { disk, n } => {
            op(&disk, n, "offline", None)?;
            println!("{disk}: component {n} is offline; its writes are tracked");
            Ok(())
        }
        MirrorCmd::Maintenance { disk, n, delta } => {
            op(&disk, n, "maintenance", delta.as_deref())?;
            println!("{disk}: component {n} is in maintenance; a delta component takes its writes");
            Ok(())
        }
        MirrorCmd::Online { disk, n } => {
            op(&disk, n, "online", None)?;
            resync_started(&disk, n, &status(&disk)?)
        }
        MirrorCmd::Replace { disk, n, path } => {
            op(&disk, n, "replace", Some(&path))?;
            println!(
                "keeld's config still names the old path of component {n}: put {} in its \
                 `mirror` list before the next start, or the old path comes back there (failed)",
                super::output::absolute(&path)
            );
            resync_started(&disk, n, &status(&disk)?)
        }
    }
}

/// The components of a `GET /v1/disks/{name}/mirror` answer as a table.
fn mirror_table(s: &serde_json::Value) -> Table {
    let mut t = Table::new(&[
        ("n", Align::Right),
        ("state", Align::Left),
        ("last LSN", Align::Right),
        ("dirty", Align::Right),
        ("resync", Align::Right),
        ("bytes copied", Align::Right),
        ("path", Align::Left),
    ]);
    for comp in s["components"].as_array().into_iter().flatten() {
        let progress = comp["resync"]
            .as_object()
            .map(|r| {
                let total = r["total_chunks"].as_u64().unwrap_or(0).max(1);
                let done = r["done_chunks"].as_u64().unwrap_or(0);
                format!("{:.1}%", 100.0 * done as f64 / total as f64)
            })
            .unwrap_or_else(|| "-".into());
        let number = |k: &str| comp[k].as_u64().map_or("?".into(), |v| v.to_string());
        let mut state = comp["state"].as_str().unwrap_or("?").to_string();
        if let Some(r) = comp["reconnect"].as_object() {
            let tries = r["attempts"].as_u64().unwrap_or(0);
            let next = r["next_in_secs"].as_u64().unwrap_or(0);
            state = format!("{state} (reconnecting: {tries} tries, next in {next} s)");
        } else if comp["remote"] == true && state == "offline" && comp["why"].is_string() {
            state = format!("{state} (reconnecting)");
        }
        t.row([
            number("index"),
            state,
            number("last_lsn"),
            number("dirty_chunks"),
            progress,
            number("resync_bytes_copied"),
            comp["path"].as_str().unwrap_or("?").to_string(),
        ]);
    }
    t
}

/// Chunks a catching-up component still needs: its plan's remainder, else its tracking bits.
fn chunks_to_copy(comp: &serde_json::Value) -> u64 {
    let r = &comp["resync"];
    match (r["total_chunks"].as_u64(), r["done_chunks"].as_u64()) {
        (Some(total), Some(done)) => total.saturating_sub(done),
        _ => comp["dirty_chunks"].as_u64().unwrap_or(0),
    }
}

/// After `online` or `replace`: the resync runs in the background, so say it started and how
/// to follow it; a resync that already failed is an error (non-zero exit).
fn resync_started(disk: &str, n: usize, s: &serde_json::Value) -> Result<(), String> {
    let comp = &s["components"][n];
    let state = comp["state"].as_str().unwrap_or("?");
    if state == "failed" {
        let why = s["events"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|e| e.as_str())
            .rfind(|e| e.contains(&format!("component {n} ")))
            .unwrap_or("no event recorded");
        return Err(format!("{disk}: component {n}: the resync failed: {why}"));
    }
    match state {
        "in_sync" => println!("{disk}: component {n} is in sync"),
        _ => println!(
            "{disk}: component {n} is back ({state}); the resync copies {} chunks in the \
             background: follow it with `keel mirror status {disk}`",
            chunks_to_copy(comp)
        ),
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mirror_status_rows_line_up_and_end_in_a_newline() {
        let status = serde_json::json!({
            "components": [
                {"index": 0, "state": "in_sync", "last_lsn": 67584, "dirty_chunks": 0,
                 "resync": null, "resync_bytes_copied": 0, "path": "/d/a.img"},
                {"index": 1, "state": "resyncing", "last_lsn": 7, "dirty_chunks": 128,
                 "resync": {"total_chunks": 128, "done_chunks": 64},
                 "resync_bytes_copied": 8388608, "path": "/d/b.img"}
            ],
            "events": []
        });
        let out = mirror_table(&status).render();
        assert_eq!(
            out,
            "n  state      last LSN  dirty  resync  bytes copied  path\n\
             0  in_sync       67584      0       -             0  /d/a.img\n\
             1  resyncing         7    128   50.0%       8388608  /d/b.img\n"
        );
    }

    #[test]
    fn a_resync_that_failed_at_once_is_an_error() {
        let status = |state: &str| {
            serde_json::json!({
                "components": [{}, {"state": state, "dirty_chunks": 3, "resync": null}],
                "events": ["component 1 failed: resync write error: Invalid argument (os error 22)"]
            })
        };
        let e = resync_started("d0", 1, &status("failed")).unwrap_err();
        assert!(e.contains("os error 22"), "{e}");
        assert!(resync_started("d0", 1, &status("stale")).is_ok());
        assert_eq!(chunks_to_copy(&status("stale")["components"][1]), 3);
    }

    #[test]
    fn a_remote_component_being_reconnected_says_so() {
        let status = serde_json::json!({
            "components": [
                {"index": 1, "state": "offline", "last_lsn": 7, "dirty_chunks": 2, "resync": null,
                 "resync_bytes_copied": 0, "path": "nbd://h/d", "remote": true,
                 "why": "write error: NBD connection lost",
                 "reconnect": {"attempts": 3, "next_in_secs": 4, "last_error": "refused"}}
            ]
        });
        let out = mirror_table(&status).render();
        assert!(
            out.contains("offline (reconnecting: 3 tries, next in 4 s)"),
            "{out}"
        );
    }
}
