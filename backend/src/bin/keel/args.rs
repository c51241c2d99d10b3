//! `keel`'s command line: every subcommand, argument and help text.

use clap::{Args, Parser, Subcommand};
use keel_backend::control::cli::{DaemonArgs, MirrorCmd};
use keel_backend::control::cli_disks::{DiskCmd, LimitsArgs};
use keel_backend::store::Spare;
use keel_protocol::parse_size;
use std::path::PathBuf;

#[derive(Parser)]
#[command(
    name = "keel",
    version,
    about = "Administer Keel disk containers and a running keeld"
)]
pub struct Cli {
    #[command(flatten)]
    pub daemon: DaemonArgs,
    /// The key of an encrypted container (and of a new one, with --encryption): a file of 32
    /// or 64 raw bytes, env:NAME (the key in hex in that variable) or credential:NAME (the
    /// systemd credential in $CREDENTIALS_DIRECTORY).
    #[arg(long, global = true, value_name = "PATH")]
    pub key_file: Option<String>,
    #[command(subcommand)]
    pub cmd: Cmd,
}

/// `--json`: the same answer as JSON, exact numbers and absolute paths.
#[derive(Args, Clone, Copy)]
pub struct JsonArg {
    /// Print the result as JSON (exact byte counts, epoch seconds, absolute paths).
    #[arg(long)]
    pub json: bool,
}

#[derive(Subcommand)]
pub enum Cmd {
    /// Create an empty container.
    Create {
        /// The container file to create (it must not exist).
        path: PathBuf,
        #[command(flatten)]
        geometry: GeometryArgs,
        #[command(flatten)]
        out: JsonArg,
    },
    /// Show size, space use, journal, checkpoint and snapshots.
    Info {
        /// A container file nobody has open (or any, with -U).
        path: PathBuf,
        /// Read a container another process (keeld) has open, without its lock and without
        /// writing: the figures are those on disk and may be slightly stale.
        #[arg(short = 'U', long)]
        force_share: bool,
        #[command(flatten)]
        out: JsonArg,
    },
    /// Open a container (replaying its journal), checkpoint it and say what recovery did.
    Recover {
        /// A container file nobody has open.
        path: PathBuf,
        /// Open a container that recovery refuses for damage at its last intact state,
        /// discarding the flushed writes it can no longer read (said in full).
        #[arg(long)]
        rewind: bool,
        #[command(flatten)]
        out: JsonArg,
    },
    /// Check every tree, the VBA map, the segment usage table and all checksums.
    Fsck {
        /// A container file nobody has open.
        path: PathBuf,
        #[command(flatten)]
        out: JsonArg,
    },
    /// Copy an image (raw, qcow2 or any format qemu-img reads, an NBD URI) into a container
    /// (created with the image's size if missing); an interrupted import resumes.
    Import {
        /// The image to read: a raw file or block device, any image qemu-img reads (qcow2 with
        /// its backing chain, vmdk, vhdx...), or an NBD URI.
        raw: String,
        /// The container to write (created if missing).
        path: PathBuf,
        #[command(flatten)]
        geometry: GeometryArgs,
        #[command(flatten)]
        out: JsonArg,
    },
    /// Copy a container's contents out to a raw image (sparse; must not exist).
    Export {
        /// A container file nobody has open.
        path: PathBuf,
        /// The raw image to write (it must not exist).
        raw: PathBuf,
        #[command(flatten)]
        out: JsonArg,
    },
    /// Snapshots: of a served disk (with a daemon named) or of a container file (without).
    #[command(subcommand)]
    Snapshot(SnapshotCmd),
    /// The changed extents between two snapshots, or a snapshot and the disk as it is now;
    /// with --export, also their data, for incremental backup (`keel apply` restores it).
    Diff {
        /// A disk keeld serves (with a daemon named), else a container file nobody has open.
        target: String,
        /// The older side: a snapshot name or id, or @empty (everything mapped: a full backup).
        from: String,
        /// The newer side: a snapshot name or id, or @running, the default (the disk now).
        to: Option<String>,
        #[command(flatten)]
        out: JsonArg,
        /// Write the changed extents with their data to FILE (it must not exist).
        #[arg(long, value_name = "FILE")]
        export: Option<PathBuf>,
    },
    /// Replay an export file onto a raw image (created if missing), a stopped keel container,
    /// or (with a daemon named) a served rbd disk.
    Apply {
        /// The export file `keel diff --export` wrote.
        file: PathBuf,
        /// A raw image or block device, or a keel container nobody has open; or a disk keeld
        /// serves (rbd disks take it; keeld reads FILE itself).
        target: String,
        /// On a served disk: apply even while a frontend is attached, and onto a disk that is
        /// not at the export's FROM point.
        #[arg(long)]
        force: bool,
        #[command(flatten)]
        out: JsonArg,
    },
    /// The disks a running keeld serves.
    Disks {
        #[command(flatten)]
        out: JsonArg,
    },
    /// A served disk's counters and latency.
    Stats {
        /// A disk keeld serves.
        disk: String,
        #[command(flatten)]
        out: JsonArg,
    },
    /// Grow a disk to SIZE: a served disk (with a daemon named), else a stopped container,
    /// into the spare space it was created with. Shrinking is refused.
    Resize {
        /// A disk keeld serves (with a daemon named), else a container file nobody has open.
        target: String,
        /// The new size, e.g. 20G, 4GiB, 1073741824 (binary units: K, M, G, T, P).
        #[arg(value_parser = parse_size)]
        size: u64,
        #[command(flatten)]
        out: JsonArg,
    },
    /// Make a new served disk from a snapshot.
    Clone {
        /// A disk keeld serves.
        disk: String,
        /// The snapshot of DISK to copy.
        snapshot: String,
        /// The new disk's name (its container and socket go beside DISK's).
        new_disk: String,
        #[command(flatten)]
        out: JsonArg,
    },
    /// Mirror components of a served disk.
    #[command(subcommand)]
    Mirror(MirrorCmd),
    /// Add a disk to a running keeld or remove one (not written to its config file).
    #[command(subcommand)]
    Disk(DiskCmd),
    /// Show a served disk's I/O limits, or change them (0 lifts a limit).
    Limits(LimitsArgs),
}

#[derive(Subcommand)]
pub enum SnapshotCmd {
    /// Freeze the current contents under a name.
    Create {
        /// A disk keeld serves (with a daemon named), else a container file nobody has open.
        target: String,
        /// The new snapshot's name.
        name: String,
        #[command(flatten)]
        out: JsonArg,
    },
    /// List snapshots, oldest first.
    List {
        /// A disk keeld serves (with a daemon named), else a container file nobody has open.
        target: String,
        #[command(flatten)]
        out: JsonArg,
    },
    /// Delete a snapshot (by name, or by its seq number), freeing the blocks only it held.
    Delete {
        /// A disk keeld serves (with a daemon named), else a container file nobody has open.
        target: String,
        /// The snapshot's name (or, offline, its seq number).
        name: String,
    },
    /// Make the disk's contents those of a snapshot again.
    Revert {
        /// A disk keeld serves (with a daemon named), else a container file nobody has open.
        target: String,
        /// The snapshot's name (or, offline, its seq number).
        name: String,
        /// Revert a served disk even while a guest is attached (its view becomes stale).
        #[arg(long)]
        force: bool,
    },
}

#[derive(Args)]
pub struct GeometryArgs {
    /// Disk size as the guest sees it, a multiple of 4K, e.g. 10G (import: defaults to the
    /// image's size).
    #[arg(long, value_parser = parse_size)]
    pub size: Option<u64>,
    /// Segment size, a power of two >= 64K.
    #[arg(long, value_parser = parse_size, default_value = "4M")]
    pub segment_size: u64,
    /// Journal size (default: 1/64 of the disk, 2 to 16 segments).
    #[arg(long, value_parser = parse_size)]
    pub journal_size: Option<u64>,
    /// Spare data space for the cleaner beyond the size: a percentage ("25%") or bytes
    /// ("512M"), 15% to 400% of the size. More spare: faster random writes on a full disk,
    /// less write amplification, more host space (docs/benchmarks.md has the trade-off).
    #[arg(long, value_parser = Spare::parse, default_value = "25%")]
    pub spare: Spare,
    /// Encrypt the new container with this cipher (the key comes from --key-file); chosen
    /// once, when the container is made.
    #[arg(long, value_parser = [keel_backend::store::seal::AES_XTS_256])]
    pub encryption: Option<String>,
    /// Compress guest blocks with this codec; chosen once, when the container is made
    /// (another setting later means `keel export` then `keel import`).
    #[arg(long, value_parser = ["none", "lz4", "zstd"], default_value = "none")]
    pub compression: String,
}
