//! Man pages and shell completions generated from a binary's clap definitions, so they never
//! drift from `--help`. Both binaries answer a hidden `--generate-docs DIR` first argument
//! with [`generate_if_asked`] (docs/operations.md, "Man pages and completions").

use std::ffi::OsString;
use std::io;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap_complete::Shell;

/// The hidden first argument that asks a binary for its docs.
pub const FLAG: &str = "--generate-docs";

/// Writes, for `cmd` and each of its subcommands, a section 1 man page into `out_dir/man1/`
/// (`keel.1`, `keel-snapshot.1`, `keel-snapshot-create.1`, ...), and bash, zsh, fish and
/// elvish completions into `out_dir/completions/`. Returns the files written.
pub fn write_docs(cmd: clap::Command, out_dir: &Path) -> io::Result<Vec<PathBuf>> {
    let man_dir = out_dir.join("man1");
    let completion_dir = out_dir.join("completions");
    std::fs::create_dir_all(&man_dir)?;
    std::fs::create_dir_all(&completion_dir)?;
    let name = cmd.get_name().to_string();
    let mut written = Vec::new();
    let mut built = cmd.disable_help_subcommand(true);
    built.build();
    write_pages(&built, &man_dir, &mut written)?;
    for shell in [Shell::Bash, Shell::Zsh, Shell::Fish, Shell::Elvish] {
        let mut cmd = built.clone();
        written.push(clap_complete::generate_to(
            shell,
            &mut cmd,
            &name,
            &completion_dir,
        )?);
    }
    Ok(written)
}

/// One page for `cmd`, then one for each visible subcommand, depth first.
fn write_pages(cmd: &clap::Command, dir: &Path, written: &mut Vec<PathBuf>) -> io::Result<()> {
    written.push(clap_mangen::Man::new(cmd.clone()).generate_to(dir)?);
    for sub in cmd.get_subcommands().filter(|s| !s.is_hide_set()) {
        write_pages(sub, dir, written)?;
    }
    Ok(())
}

/// When `args` (the process's, program name first) are `--generate-docs DIR`, writes the
/// docs of `cmd()` into DIR and returns the exit code; otherwise `None`, and the binary parses
/// its arguments as usual.
pub fn generate_if_asked(
    args: &[OsString],
    cmd: impl FnOnce() -> clap::Command,
) -> Option<ExitCode> {
    if args.get(1).is_none_or(|a| a != FLAG) {
        return None;
    }
    let [_, _, dir] = args else {
        eprintln!("usage: {FLAG} DIR");
        return Some(ExitCode::from(2));
    };
    Some(match write_docs(cmd(), Path::new(dir)) {
        Ok(files) => {
            for f in files {
                println!("{}", f.display());
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("{FLAG} {}: {e}", Path::new(dir).display());
            ExitCode::FAILURE
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::{Arg, Command};

    fn sample() -> Command {
        Command::new("tool")
            .about("A sample tool")
            .version("1.0")
            .arg(Arg::new("config").long("config").help("The config file"))
            .subcommand(
                Command::new("snap")
                    .about("Snapshots")
                    .subcommand(Command::new("create").about("Take one")),
            )
            .subcommand(Command::new("secret").hide(true))
    }

    #[test]
    fn pages_and_completions_cover_every_visible_command() {
        let dir = tempfile::tempdir().unwrap();
        let files = write_docs(sample(), dir.path()).unwrap();
        let names: Vec<String> = files
            .iter()
            .map(|f| f.strip_prefix(dir.path()).unwrap().display().to_string())
            .collect();
        for want in [
            "man1/tool.1",
            "man1/tool-snap.1",
            "man1/tool-snap-create.1",
            "completions/tool.bash",
            "completions/_tool",
            "completions/tool.fish",
        ] {
            assert!(names.iter().any(|n| n == want), "{want} in {names:?}");
        }
        assert!(!names.iter().any(|n| n.contains("secret")), "{names:?}");
        let page = std::fs::read_to_string(dir.path().join("man1/tool.1")).unwrap();
        assert!(
            page.contains("A sample tool") && page.contains("config"),
            "{page}"
        );
        let bash = std::fs::read_to_string(dir.path().join("completions/tool.bash")).unwrap();
        assert!(bash.contains("--config") && bash.contains("snap"), "{bash}");
    }

    #[test]
    fn only_the_first_argument_asks_for_docs() {
        let args = |v: &[&str]| v.iter().map(OsString::from).collect::<Vec<_>>();
        assert!(generate_if_asked(&args(&["tool", "--config", "x"]), sample).is_none());
        assert!(generate_if_asked(&args(&["tool"]), sample).is_none());
        assert_eq!(
            generate_if_asked(&args(&["tool", FLAG]), sample),
            Some(ExitCode::from(2))
        );
        let dir = tempfile::tempdir().unwrap();
        let dir_arg = dir.path().to_str().unwrap();
        assert_eq!(
            generate_if_asked(&args(&["tool", FLAG, dir_arg]), sample),
            Some(ExitCode::SUCCESS)
        );
        assert!(dir.path().join("man1/tool-snap.1").exists());
    }
}
