//! `berth-runtime image …`: the image store from the command line — import a layout or
//! archive, pull from a registry, list, remove, garbage-collect.

use std::path::PathBuf;

use berth_runtime::image::ImageStore;
use berth_runtime::image::pull::{PullOptions, pull};
use clap::Subcommand;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// The image store directory.
    #[arg(long, default_value = "/var/lib/berth")]
    pub image_root: PathBuf,
    #[command(subcommand)]
    pub command: ImageCommand,
}

#[derive(Debug, Subcommand)]
pub enum ImageCommand {
    /// Import an OCI layout directory or an oci-archive/docker-archive tarball.
    Import {
        path: PathBuf,
        /// Name the image (default: the name the layout or archive carries).
        #[arg(long = "ref")]
        reference: Option<String>,
    },
    /// Pull an image from a registry.
    Pull {
        reference: String,
        #[arg(long)]
        username: Option<String>,
        #[arg(long, env = "BERTH_REGISTRY_PASSWORD", hide_env_values = true)]
        password: Option<String>,
        /// Use plain HTTP (always for localhost).
        #[arg(long)]
        plain_http: bool,
        /// Extra CA certificate (PEM) for HTTPS.
        #[arg(long)]
        ca_file: Option<PathBuf>,
    },
    /// List stored images.
    Ls,
    /// Remove an image's name (its blobs go at the next gc).
    Rm { reference: String },
    /// Delete blobs and layers no image references.
    Gc,
}

pub fn run(args: &Args) -> anyhow::Result<()> {
    let store = ImageStore::open(&args.image_root)?;
    match &args.command {
        ImageCommand::Import { path, reference } => {
            let image = if path.is_dir() {
                store.import_layout(path, reference.as_deref())?
            } else {
                store.import_archive(path, reference.as_deref())?
            };
            println!("{} {}", image.reference, image.digest);
        }
        ImageCommand::Pull {
            reference,
            username,
            password,
            plain_http,
            ca_file,
        } => {
            let opts = PullOptions {
                username: username.clone(),
                password: password.clone(),
                plain_http: *plain_http,
                ca_file: ca_file.clone(),
                progress: true,
                ..PullOptions::default()
            };
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            let image = rt.block_on(pull(&store, reference, &opts))?;
            println!("{} {}", image.reference, image.digest);
        }
        ImageCommand::Ls => {
            println!("{:<50} {:<20} SIZE", "REFERENCE", "DIGEST");
            for image in store.list() {
                println!(
                    "{:<50} {:<20} {}",
                    image.reference,
                    &image.digest[..image.digest.len().min(19)],
                    image.size
                );
            }
        }
        ImageCommand::Rm { reference } => store.remove(reference)?,
        ImageCommand::Gc => {
            let (blobs, layers) = store.gc(&[])?;
            println!("removed {blobs} blobs, {layers} layers");
        }
    }
    Ok(())
}
