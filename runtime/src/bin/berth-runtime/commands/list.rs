//! `berth-runtime list`.

use berth_runtime::{Root, container};

#[derive(Debug, clap::Args)]
pub struct Args {
    /// table or json
    #[arg(long, short, default_value = "table")]
    pub format: String,
    /// Print only ids.
    #[arg(long, short)]
    pub quiet: bool,
}

pub fn run(root: &Root, args: &Args) -> anyhow::Result<()> {
    let mut states = Vec::new();
    for id in root.ids() {
        match root.load(&id) {
            Ok(state) => states.push(container::oci_state(root, &state)),
            Err(err) => eprintln!("berth-runtime: {id}: {err}"),
        }
    }
    if args.quiet {
        for s in &states {
            println!("{}", s.id);
        }
        return Ok(());
    }
    match args.format.as_str() {
        "json" => println!("{}", serde_json::to_string(&states)?),
        "table" => {
            println!(
                "{:<24} {:<8} {:<10} {:<40} CREATED",
                "ID", "PID", "STATUS", "BUNDLE"
            );
            for s in &states {
                println!(
                    "{:<24} {:<8} {:<10} {:<40} {}",
                    s.id,
                    s.pid,
                    s.status.to_string(),
                    s.bundle.display(),
                    s.created
                );
            }
        }
        other => anyhow::bail!("unknown format {other:?}: use table or json"),
    }
    Ok(())
}
