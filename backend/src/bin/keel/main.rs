//! `keel`: Keel's admin CLI. Works offline on a container nobody has open (it takes the
//! container's exclusive lock and says so when keeld holds it), and online on a running keeld
//! through its control socket (disks, stats, snapshots, mirrors).

mod args;
mod offline;
mod transfer;

use args::{Cli, Cmd, SnapshotCmd};
use clap::{CommandFactory, Parser};
use keel_backend::control::cli::{self as online, DaemonArgs};
use keel_backend::control::cli_disks;
use keel_backend::store::diff::RUNNING;
use std::io::Write;
use std::path::Path;
use std::process::ExitCode;
use transfer::{CHUNK, print_export, write_export};

/// Whether `target` names a served disk: a daemon is named and no such file exists.
fn served(daemon: &DaemonArgs, target: &str) -> Result<bool, String> {
    Ok(daemon.socket()?.is_some() && !Path::new(target).exists())
}

fn run(cli: Cli) -> Result<ExitCode, String> {
    let daemon = cli.daemon;
    offline::load_key(cli.key_file.as_deref())?;
    match cli.cmd {
        Cmd::Disks { out } => online::list_disks(&daemon.client()?, out.json)?,
        Cmd::Stats { disk, out } => online::stats(&daemon.client()?, &disk, out.json)?,
        Cmd::Clone {
            disk,
            snapshot,
            new_disk,
            out,
        } => online::clone(&daemon.client()?, &disk, &snapshot, &new_disk, out.json)?,
        Cmd::Mirror(m) => online::mirror(&daemon.client()?, m)?,
        Cmd::Disk(d) => cli_disks::disk(&daemon.client()?, d)?,
        Cmd::Limits(l) => cli_disks::limits(&daemon.client()?, &l)?,
        Cmd::Resize { target, size, out } => {
            if served(&daemon, &target)? {
                online::resize(&daemon.client()?, &target, size, out.json)?
            } else {
                offline::resize(Path::new(&target), size, out.json)?
            }
        }
        Cmd::Diff {
            target,
            from,
            to,
            out,
            export,
        } => {
            let to = to.unwrap_or_else(|| RUNNING.to_string());
            if served(&daemon, &target)? {
                let c = daemon.client()?;
                match export {
                    None => online::diff(&c, &target, &from, &to, out.json)?,
                    Some(file) => {
                        let t = write_export(&file, &mut |f| {
                            let mut w = std::io::BufWriter::with_capacity(CHUNK, f);
                            online::diff_export(&c, &target, &from, &to, &mut w)?;
                            w.flush().map_err(|e| e.to_string())
                        })?;
                        print_export(&file, &t, out.json)?;
                    }
                }
            } else {
                transfer::diff_offline(
                    Path::new(&target),
                    &from,
                    &to,
                    out.json,
                    export.as_deref(),
                )?;
            }
        }
        Cmd::Apply {
            file,
            target,
            force,
            out,
        } => {
            if served(&daemon, &target)? {
                online::apply(&daemon.client()?, &target, &file, force, out.json)?
            } else {
                transfer::apply(&file, Path::new(&target), out.json)?
            }
        }
        Cmd::Snapshot(s) if daemon.socket()?.is_some() => {
            let c = daemon.client()?;
            match s {
                SnapshotCmd::Create { target, name, out } => {
                    online::snapshot_create(&c, &target, &name, out.json)?
                }
                SnapshotCmd::List { target, out } => online::snapshot_list(&c, &target, out.json)?,
                SnapshotCmd::Delete { target, name } => {
                    online::snapshot_delete(&c, &target, &name)?
                }
                SnapshotCmd::Revert {
                    target,
                    name,
                    force,
                } => online::snapshot_revert(&c, &target, &name, force)?,
            }
        }
        Cmd::Snapshot(s) => match s {
            SnapshotCmd::Create { target, name, out } => {
                offline::snapshot_create(Path::new(&target), &name, out.json)?
            }
            SnapshotCmd::List { target, out } => {
                offline::snapshot_list(Path::new(&target), out.json)?
            }
            SnapshotCmd::Delete { target, name } => {
                offline::snapshot_delete(Path::new(&target), &name)?
            }
            SnapshotCmd::Revert { target, name, .. } => {
                offline::snapshot_revert(Path::new(&target), &name)?
            }
        },
        Cmd::Create {
            path,
            geometry,
            out,
        } => offline::create(&path, &geometry, out.json)?,
        Cmd::Info {
            path,
            force_share,
            out,
        } => offline::info(&path, out.json, force_share)?,
        Cmd::Recover { path, rewind, out } => offline::recover(&path, rewind, out.json)?,
        Cmd::Fsck { path, out } => {
            if !offline::fsck(&path, out.json)? {
                return Ok(ExitCode::from(1));
            }
        }
        Cmd::Import {
            raw,
            path,
            geometry,
            out,
        } => transfer::import(&raw, &path, &geometry, out.json)?,
        Cmd::Export { path, raw, out } => transfer::export(&path, &raw, out.json)?,
    }
    Ok(ExitCode::SUCCESS)
}

fn main() -> ExitCode {
    let argv: Vec<_> = std::env::args_os().collect();
    if let Some(code) = keel_backend::cli_docs::generate_if_asked(&argv, Cli::command) {
        return code;
    }
    match run(Cli::parse_from(argv)) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("keel: {e}");
            ExitCode::from(2)
        }
    }
}
