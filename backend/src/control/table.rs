//! Plain-text tables for `keel`'s human-readable output: every cell of a column padded to the
//! column's widest cell, so rows line up under their headers whatever the values' lengths.

/// Which side of its column a cell sits on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Align {
    /// Text: names, states, paths.
    Left,
    /// Numbers, so their digits line up.
    Right,
}

/// A table built row by row and rendered at once (widths are known only at the end).
#[derive(Clone, Debug, Default)]
pub struct Table {
    columns: Vec<(String, Align)>,
    rows: Vec<Vec<String>>,
}

/// Spaces between two columns.
const GAP: &str = "  ";

impl Table {
    /// A table with these column headers.
    pub fn new<'a>(columns: impl IntoIterator<Item = (&'a str, Align)>) -> Self {
        Self {
            columns: columns
                .into_iter()
                .map(|(h, a)| (h.to_string(), a))
                .collect(),
            rows: Vec::new(),
        }
    }

    /// Adds a row; missing cells are blank and cells beyond the last column are dropped.
    pub fn row(&mut self, cells: impl IntoIterator<Item = impl ToString>) -> &mut Self {
        let mut row: Vec<String> = cells.into_iter().map(|c| c.to_string()).collect();
        row.resize(self.columns.len(), String::new());
        self.rows.push(row);
        self
    }

    /// The header line and every row, each ending in a newline. Trailing spaces are trimmed,
    /// so a left-aligned last column (a path) leaves no padding behind.
    pub fn render(&self) -> String {
        let width = |i: usize| {
            self.rows
                .iter()
                .map(|r| r[i].chars().count())
                .chain([self.columns[i].0.chars().count()])
                .max()
                .unwrap_or(0)
        };
        let widths: Vec<usize> = (0..self.columns.len()).map(width).collect();
        let headers: Vec<String> = self.columns.iter().map(|(h, _)| h.clone()).collect();
        let mut out = String::new();
        for cells in std::iter::once(&headers).chain(&self.rows) {
            let line: Vec<String> = cells
                .iter()
                .zip(&self.columns)
                .zip(&widths)
                .map(|((cell, (_, align)), &w)| match align {
                    Align::Left => format!("{cell:<w$}"),
                    Align::Right => format!("{cell:>w$}"),
                })
                .collect();
            out.push_str(line.join(GAP).trim_end());
            out.push('\n');
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cells_line_up_under_their_headers_and_every_line_ends() {
        let mut t = Table::new([
            ("n", Align::Right),
            ("state", Align::Left),
            ("path", Align::Left),
        ]);
        t.row(["0", "in_sync", "/a.img"]);
        t.row(["12", "resyncing", "/long/b.img"]);
        let out = t.render();
        assert_eq!(
            out,
            " n  state      path\n 0  in_sync    /a.img\n12  resyncing  /long/b.img\n"
        );
        // Every column starts at the same offset on every line.
        let starts: Vec<usize> = out.lines().map(|l| l.find("  ").unwrap()).collect();
        assert!(starts.windows(2).all(|w| w[0] == w[1]), "{out}");
    }

    #[test]
    fn short_and_long_rows_are_fitted_to_the_columns() {
        let mut t = Table::new([("a", Align::Left), ("b", Align::Right)]);
        t.row(["x"]);
        t.row(["y", "1", "dropped"]);
        assert_eq!(t.render(), "a  b\nx\ny  1\n");
    }
}
