//! `--generate-docs DIR`: man pages and shell completions for keeld and keel, generated from
//! the same clap definitions as `--help`; and `keel --help` names every command on one line.

use std::path::Path;
use std::process::Command;

use keel_tests::keeld::{keel_binary, keeld_binary};

fn generate(binary: &Path, dir: &Path) {
    let out = Command::new(binary)
        .arg("--generate-docs")
        .arg(dir)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The subcommand names `keel --help` lists, one per line under "Commands:".
fn help_commands() -> Vec<String> {
    let out = Command::new(keel_binary()).arg("--help").output().unwrap();
    let help = String::from_utf8(out.stdout).unwrap();
    help.lines()
        .skip_while(|l| *l != "Commands:")
        .skip(1)
        .take_while(|l| !l.is_empty())
        .map(|l| {
            let mut words = l.split_whitespace();
            let name = words.next().unwrap().to_string();
            assert!(words.next().is_some(), "{name} has no one-line summary");
            name
        })
        .filter(|name| name != "help")
        .collect()
}

#[test]
fn every_command_has_a_man_page_and_completions() {
    let dir = tempfile::tempdir().unwrap();
    generate(&keeld_binary(), dir.path());
    generate(&keel_binary(), dir.path());
    let man = dir.path().join("man1");
    for page in ["keeld.1", "keel.1"] {
        let text = std::fs::read_to_string(man.join(page)).unwrap();
        assert!(text.contains(".SH SYNOPSIS"), "{page}");
    }
    let keeld_page = std::fs::read_to_string(man.join("keeld.1")).unwrap();
    assert!(keeld_page.contains(r"\-\-config"), "{keeld_page}");

    let commands = help_commands();
    assert!(commands.len() >= 10, "{commands:?}");
    for c in &commands {
        let page = man.join(format!("keel-{c}.1"));
        assert!(page.exists(), "no man page for keel {c}");
    }
    let snapshot = std::fs::read_to_string(man.join("keel-snapshot.1")).unwrap();
    assert!(snapshot.contains("create"), "{snapshot}");
    assert!(man.join("keel-snapshot-create.1").exists());

    // bash takes the completion script and registers it for the command.
    let completions = dir.path().join("completions");
    for name in ["keel", "keeld"] {
        let script = completions.join(format!("{name}.bash"));
        let out = Command::new("bash")
            .arg("-c")
            .arg(format!(
                "source '{}' && complete -p {name}",
                script.display()
            ))
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{name}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(String::from_utf8_lossy(&out.stdout).contains(name));
    }
    let bash = std::fs::read_to_string(completions.join("keel.bash")).unwrap();
    for c in &commands {
        assert!(bash.contains(c.as_str()), "bash completion lacks {c}");
    }
    assert!(completions.join("_keel").exists() && completions.join("keel.fish").exists());
}
