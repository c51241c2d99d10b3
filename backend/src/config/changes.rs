//! What differs between two configs, in words: keeld says it when SIGHUP asks for a reload it
//! does not do, so an operator knows what a restart would change.

use super::Config;

impl Config {
    /// The differences from `old` to `self`, one phrase each (`disk vm2 added`); empty when
    /// the two serve the same disks the same way.
    pub fn changes_from(&self, old: &Config) -> Vec<String> {
        let mut out = Vec::new();
        if self.server != old.server {
            out.push("[server] changed".to_string());
        }
        for d in &old.disks {
            match self.disks.iter().find(|n| n.name == d.name) {
                None => out.push(format!("disk {} removed", d.name)),
                Some(n) if n != d => out.push(format!("disk {} changed", d.name)),
                Some(_) => {}
            }
        }
        for n in &self.disks {
            if !old.disks.iter().any(|d| d.name == n.name) {
                out.push(format!("disk {} added", n.name));
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    fn parse(text: &str) -> Config {
        Config::parse(text, Path::new("keel.toml"), Path::new("/tmp")).unwrap()
    }

    fn null(name: &str, size: &str) -> String {
        format!(
            "[[disk]]\nname = \"{name}\"\nsocket = \"{name}.sock\"\nengine = \"null\"\n\
             size = \"{size}\"\n"
        )
    }

    #[test]
    fn names_each_added_removed_and_changed_disk() {
        let old = parse(&format!("{}{}", null("a", "1G"), null("b", "1G")));
        assert!(old.changes_from(&old).is_empty());
        let new = parse(&format!("{}{}", null("a", "2G"), null("c", "1G")));
        assert_eq!(
            new.changes_from(&old),
            ["disk a changed", "disk b removed", "disk c added"]
        );
        let logged = parse(&format!(
            "[server]\nlog_level = \"debug\"\n{}",
            null("a", "1G")
        ));
        assert_eq!(
            logged.changes_from(&parse(&null("a", "1G"))),
            ["[server] changed"]
        );
    }
}
