//! `keel-client info`.

use std::process::ExitCode;

use clap::Args;
use keel_client::negotiate::protocol_names;
use keel_protocol::features::names;
use serde::Serialize;
use vhost::vhost_user::message::VhostUserProtocolFeatures;

use super::ConnectArgs;

#[derive(Args, Debug)]
pub struct InfoArgs {
    #[command(flatten)]
    connect: ConnectArgs,
    /// Print JSON instead of text.
    #[arg(long)]
    json: bool,
}

#[derive(Serialize)]
struct Info {
    features: Vec<&'static str>,
    offered_features: Vec<&'static str>,
    protocol_features: String,
    capacity_bytes: u64,
    block_size: u32,
    device_queues: u16,
    seg_max: u32,
    size_max: u32,
    max_discard_sectors: u32,
    max_write_zeroes_sectors: u32,
    write_back_cache: bool,
    serial: Option<String>,
}

pub fn run(args: InfoArgs) -> Result<ExitCode, Box<dyn std::error::Error>> {
    let mut disk = args.connect.connect(Some(1), 1 << 20)?;
    let i = disk.info().clone();
    let serial = match disk.take_queue(0) {
        Some(mut q) => q.get_id().ok(),
        None => None,
    };
    let info = Info {
        features: names(i.features),
        offered_features: names(i.offered_features),
        protocol_features: protocol_names(VhostUserProtocolFeatures::from_bits_truncate(
            i.protocol_features,
        )),
        capacity_bytes: i.capacity(),
        block_size: i.block_size(),
        device_queues: i.device_queues,
        seg_max: i.config.seg_max,
        size_max: i.config.size_max,
        max_discard_sectors: i.config.max_discard_sectors,
        max_write_zeroes_sectors: i.config.max_write_zeroes_sectors,
        write_back_cache: i.config.wce != 0,
        serial,
    };
    if args.json {
        println!("{}", serde_json::to_string_pretty(&info)?);
    } else {
        println!("features:          {}", info.features.join(" "));
        println!("protocol features: {}", info.protocol_features);
        println!(
            "capacity:          {} bytes ({} sectors, {:.2} GiB)",
            info.capacity_bytes,
            i.config.capacity,
            info.capacity_bytes as f64 / f64::from(1u32 << 30)
        );
        println!("block size:        {}", info.block_size);
        println!("queues:            {}", info.device_queues);
        println!("seg_max:           {}", info.seg_max);
        println!("size_max:          {}", info.size_max);
        println!("max discard:       {} sectors", info.max_discard_sectors);
        println!(
            "max write zeroes:  {} sectors",
            info.max_write_zeroes_sectors
        );
        println!("write-back cache:  {}", info.write_back_cache);
        println!(
            "serial:            {}",
            info.serial.as_deref().unwrap_or("(GET_ID not supported)")
        );
    }
    Ok(ExitCode::SUCCESS)
}
