//! Prints the vhost-user messages a `vhost_frontend` input decodes to:
//! `cargo run --example show_frontend <file>`.

fn main() -> std::io::Result<()> {
    for path in std::env::args_os().skip(1) {
        let bytes = std::fs::read(&path)?;
        println!("{}:", std::path::Path::new(&path).display());
        for m in keel_tests::raw_frontend::decode(&bytes) {
            println!(
                "  code {} flags {:#x} size {} payload {:02x?} fds {:?}",
                m.code, m.flags, m.size, m.payload, m.fds
            );
        }
    }
    Ok(())
}
