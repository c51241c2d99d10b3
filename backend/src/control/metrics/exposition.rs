//! A writer for the Prometheus text exposition format (version 0.0.4): `# HELP` and `# TYPE`
//! lines, then one line per series. Small enough to keep here; `promtool check metrics`
//! checks its output in the tests.

use std::fmt::Write;

/// Label pairs of one series, in order.
pub type Labels = Vec<(&'static str, String)>;

/// A metric type as the format names it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Counter,
    Gauge,
}

/// One metric family: its samples, written together.
pub struct Family {
    name: &'static str,
    help: &'static str,
    kind: Kind,
    samples: Vec<(Labels, f64)>,
}

impl Family {
    /// `name` is the full series name (counters end in `_total`).
    pub fn new(name: &'static str, kind: Kind, help: &'static str) -> Self {
        Self {
            name,
            help,
            kind,
            samples: Vec::new(),
        }
    }

    pub fn add(&mut self, labels: Labels, value: impl Into<Sample>) {
        self.samples.push((labels, value.into().0));
    }

    /// Writes the family; one with no samples writes nothing.
    pub fn write(&self, out: &mut String) {
        if self.samples.is_empty() {
            return;
        }
        let kind = match self.kind {
            Kind::Counter => "counter",
            Kind::Gauge => "gauge",
        };
        head(out, self.name, self.help, kind);
        for (labels, value) in &self.samples {
            series(out, self.name, labels, *value);
        }
    }
}

/// A sample value; u64 counters above 2^53 lose only their last digits in f64.
pub struct Sample(f64);

impl From<u64> for Sample {
    fn from(v: u64) -> Self {
        Self(v as f64)
    }
}

impl From<f64> for Sample {
    fn from(v: f64) -> Self {
        Self(v)
    }
}

impl From<bool> for Sample {
    fn from(v: bool) -> Self {
        Self(if v { 1.0 } else { 0.0 })
    }
}

/// One histogram series: cumulative bucket counts by upper bound (the last is +Inf).
pub struct HistogramSample {
    pub labels: Labels,
    pub buckets: Vec<(f64, u64)>,
    pub sum: f64,
    pub count: u64,
}

/// Writes a histogram family.
pub fn write_histogram(out: &mut String, name: &str, help: &str, samples: &[HistogramSample]) {
    if samples.is_empty() {
        return;
    }
    head(out, name, help, "histogram");
    let bucket = format!("{name}_bucket");
    for s in samples {
        for &(le, count) in &s.buckets {
            let mut labels = s.labels.clone();
            labels.push(("le", number(le)));
            series(out, &bucket, &labels, count as f64);
        }
        series(out, &format!("{name}_sum"), &s.labels, s.sum);
        series(out, &format!("{name}_count"), &s.labels, s.count as f64);
    }
}

fn head(out: &mut String, name: &str, help: &str, kind: &str) {
    let help = help.replace('\\', r"\\").replace('\n', r"\n");
    let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
}

fn series(out: &mut String, name: &str, labels: &Labels, value: f64) {
    out.push_str(name);
    if !labels.is_empty() {
        out.push('{');
        for (i, (key, value)) in labels.iter().enumerate() {
            if i > 0 {
                out.push(',');
            }
            let value = value
                .replace('\\', r"\\")
                .replace('"', "\\\"")
                .replace('\n', r"\n");
            let _ = write!(out, "{key}=\"{value}\"");
        }
        out.push('}');
    }
    let _ = writeln!(out, " {}", number(value));
}

/// A value as the format spells it: integers without a fraction, `+Inf` for infinity.
fn number(v: f64) -> String {
    if v == f64::INFINITY {
        "+Inf".into()
    } else if v == f64::NEG_INFINITY {
        "-Inf".into()
    } else if v.is_nan() {
        "NaN".into()
    } else {
        format!("{v}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn label_values_are_escaped() {
        let mut f = Family::new("x_total", Kind::Counter, "a\\b\nc");
        f.add(vec![("disk", "a\"b\\c\nd".into())], 3u64);
        let mut out = String::new();
        f.write(&mut out);
        assert_eq!(
            out,
            "# HELP x_total a\\\\b\\nc\n# TYPE x_total counter\nx_total{disk=\"a\\\"b\\\\c\\nd\"} 3\n"
        );
    }

    #[test]
    fn numbers_are_spelled_as_the_format_wants() {
        assert_eq!(number(3.0), "3");
        assert_eq!(number(0.000016), "0.000016");
        assert_eq!(number(f64::INFINITY), "+Inf");
    }
}
