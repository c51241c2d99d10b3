//! The cost of `keel diff` against the size of the disk: LBA trees of growing size, a fixed
//! number of blocks changed after a snapshot, the tree diff (which skips shared subtrees)
//! against a merge of both trees' full entry lists (what a diff that cannot see sharing costs).
//! Metadata only, in memory: the walk is the diff; reading data is `--export`'s cost.
//!
//! Usage: diff_bench [--sizes N,N,..] [--changes N,N,..] [--runs N]
//! Prints a markdown table and, after a line "JSON:", the raw numbers.

use keel_backend::store::btree::{Forest, NodeId};
use keel_backend::store::diff::diff_trees;
use keel_backend::store::maps::Vba;

use clap::Parser;
use serde::Serialize;
use std::time::Instant;

/// The cost of `keel diff` against the size of the disk.
#[derive(Parser)]
struct Args {
    /// Mapped blocks of the trees diffed.
    #[arg(long, value_delimiter = ',', default_values_t = [100_000u64, 1_000_000, 4_000_000])]
    sizes: Vec<u64>,
    /// Blocks changed after the snapshot.
    #[arg(long, value_delimiter = ',', default_values_t = [100u64, 10_000])]
    changes: Vec<u64>,
    /// Runs of every case; the table shows medians.
    #[arg(long, default_value_t = 5)]
    runs: usize,
}

#[derive(Serialize)]
struct Row {
    mapped_blocks: u64,
    changed_blocks: u64,
    found: usize,
    nodes_opened: u64,
    shared_skipped: u64,
    diff_median_us: f64,
    full_merge_median_us: f64,
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// Entries of both trees merged by key: the diff without node sharing.
fn full_merge(f: &Forest<Vba>, a: NodeId, b: NodeId) -> usize {
    let (x, y) = (f.entries(a), f.entries(b));
    let (mut i, mut j, mut n) = (0, 0, 0);
    while i < x.len() || j < y.len() {
        match (x.get(i), y.get(j)) {
            (Some(p), Some(q)) if p.0 == q.0 => {
                n += usize::from(p.1 != q.1);
                i += 1;
                j += 1;
            }
            (Some(p), Some(q)) if p.0 < q.0 => {
                n += 1;
                i += 1;
            }
            (Some(_), None) => {
                n += 1;
                i += 1;
            }
            _ => {
                n += 1;
                j += 1;
            }
        }
    }
    n
}

fn main() {
    let args = Args::parse();
    let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    let mut rows = Vec::new();
    for &size in &args.sizes {
        // The disk written once, in LBA order, as a guest's first pass would leave it.
        let mut f: Forest<Vba> = Forest::new();
        let mut running = f.new_leaf(1);
        for k in 0..size {
            f.insert(&mut running, k, Vba(k), 2, 0);
        }
        for &changes in &args.changes {
            // A snapshot (seq 2 frozen), then `changes` random blocks rewritten.
            let mut run = running;
            let snap = running;
            // The snapshot's reference, so the writes below copy its nodes.
            f.retain(snap);
            let mut rng = fastrand::Rng::with_seed(size ^ changes);
            for i in 0..changes {
                f.insert(&mut run, rng.u64(0..size), Vba(size + i), 3, 2);
            }
            let mut times = Vec::new();
            let mut full = Vec::new();
            let mut last = None;
            for _ in 0..args.runs {
                let t = Instant::now();
                let d = diff_trees(&f, Some(snap), Some(run));
                times.push(t.elapsed().as_secs_f64() * 1e6);
                let t = Instant::now();
                let n = full_merge(&f, snap, run);
                full.push(t.elapsed().as_secs_f64() * 1e6);
                assert_eq!(n, d.blocks.len(), "both ways find the same blocks");
                last = Some(d);
            }
            let d = last.expect("at least one run");
            rows.push(Row {
                mapped_blocks: size,
                changed_blocks: changes,
                found: d.blocks.len(),
                nodes_opened: d.nodes_opened,
                shared_skipped: d.shared_skipped,
                diff_median_us: median(times),
                full_merge_median_us: median(full),
            });
            // Back to the snapshot's tree for the next change count: drop the copies.
            f.unref(run);
            f.unref(snap);
        }
    }
    println!("load average: {}", load.trim());
    println!(
        "| mapped blocks | changed | found | nodes opened | shared skipped | diff (us) | full merge (us) | ratio |"
    );
    println!("|---:|---:|---:|---:|---:|---:|---:|---:|");
    for r in &rows {
        println!(
            "| {} | {} | {} | {} | {} | {:.0} | {:.0} | {:.1}x |",
            r.mapped_blocks,
            r.changed_blocks,
            r.found,
            r.nodes_opened,
            r.shared_skipped,
            r.diff_median_us,
            r.full_merge_median_us,
            r.full_merge_median_us / r.diff_median_us.max(1e-3)
        );
    }
    println!("\nJSON:");
    println!(
        "{}",
        serde_json::to_string_pretty(&rows).expect("rows serialize")
    );
}
