//! How `keel` shows things: one table layout for every listing, sizes in binary units and
//! times in ISO 8601 for people, exact numbers and absolute paths in `--json`.

use serde::Serialize;
use std::fmt::Write as _;
use std::path::Path;
use std::time::{Duration, UNIX_EPOCH};

pub use keel_protocol::format_size;

/// Which side of its column a cell sits on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Align {
    Left,
    Right,
}

/// A table whose columns are as wide as their widest cell, so no value, however long,
/// runs into its neighbour. The last column is not padded.
#[derive(Debug)]
pub struct Table {
    header: Vec<(String, Align)>,
    rows: Vec<Vec<String>>,
}

impl Table {
    /// A table with these column titles and alignments.
    pub fn new(columns: &[(&str, Align)]) -> Self {
        Self {
            header: columns.iter().map(|(t, a)| (t.to_string(), *a)).collect(),
            rows: Vec::new(),
        }
    }

    /// Adds a row; missing cells are blank, extra cells are dropped.
    pub fn row<I, S>(&mut self, cells: I)
    where
        I: IntoIterator<Item = S>,
        S: ToString,
    {
        let mut row: Vec<String> = cells.into_iter().map(|c| c.to_string()).collect();
        row.resize(self.header.len(), String::new());
        self.rows.push(row);
    }

    /// The table as text, one line per row after the header, each ending in a newline.
    pub fn render(&self) -> String {
        let widths: Vec<usize> = (0..self.header.len())
            .map(|i| {
                self.rows
                    .iter()
                    .map(|r| r[i].chars().count())
                    .chain([self.header[i].0.chars().count()])
                    .max()
                    .unwrap_or(0)
            })
            .collect();
        let titles: Vec<String> = self.header.iter().map(|(t, _)| t.clone()).collect();
        let mut out = String::new();
        for row in std::iter::once(&titles).chain(&self.rows) {
            let mut line = String::new();
            for (i, cell) in row.iter().enumerate() {
                if i > 0 {
                    line.push_str("  ");
                }
                let last = i + 1 == row.len();
                let _ = match self.header[i].1 {
                    Align::Right => write!(line, "{cell:>w$}", w = widths[i]),
                    Align::Left if last => write!(line, "{cell}"),
                    Align::Left => write!(line, "{cell:<w$}", w = widths[i]),
                };
            }
            out.push_str(line.trim_end());
            out.push('\n');
        }
        out
    }

    /// Prints the table on stdout.
    pub fn print(&self) {
        print!("{}", self.render());
    }
}

/// Seconds since the epoch as an ISO 8601 UTC time (`2026-12-06T13:59:04Z`).
pub fn format_time(epoch_seconds: u64) -> String {
    humantime::format_rfc3339_seconds(UNIX_EPOCH + Duration::from_secs(epoch_seconds)).to_string()
}

/// A path as an absolute one (against the current directory), for messages and `--json`.
pub fn absolute(path: &Path) -> String {
    std::path::absolute(path)
        .unwrap_or_else(|_| path.to_owned())
        .display()
        .to_string()
}

/// Prints `v` as pretty JSON on stdout.
pub fn print_json<T: Serialize + ?Sized>(v: &T) -> Result<(), String> {
    println!(
        "{}",
        serde_json::to_string_pretty(v).map_err(|e| e.to_string())?
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn columns_fit_their_longest_cell() {
        let mut t = Table::new(&[
            ("name", Align::Left),
            ("size", Align::Right),
            ("at", Align::Left),
        ]);
        let long = "a-snapshot-name-of-31-characters";
        t.row([long, "1.0 GiB", "x"]);
        t.row(["s", "512 B", "y"]);
        let text = t.render();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines[0], format!("{:<32}  {:>7}  at", "name", "size"));
        assert_eq!(lines[1], format!("{long}  1.0 GiB  x"));
        assert_eq!(lines[2], format!("{:<32}    512 B  y", "s"));
    }

    #[test]
    fn times_are_iso_utc() {
        assert_eq!(format_time(0), "1970-01-01T00:00:00Z");
        assert_eq!(format_time(1_796_561_685), "2026-12-06T12:54:45Z");
    }
}
