//! `kura certs`: a cluster CA, node and operator certificates, and what a directory
//! of certificates holds.

use crate::certs::{
    list, new_ca, new_leaf, operator, read_ca, write, CertError, Issued, OffsetDateTime,
};
use crate::net::tls::Identity;
use clap::Subcommand;
use std::path::PathBuf;

/// Where a new certificate comes from and goes.
#[derive(Debug, clap::Args)]
pub struct LeafArgs {
    /// The CA's directory (`ca.crt`, `ca.key`).
    #[arg(long, default_value = "kura-ca")]
    pub ca_dir: PathBuf,
    /// Where to write the files.
    #[arg(long, default_value = ".")]
    pub out_dir: PathBuf,
    #[arg(long, value_enum, default_value = "p256")]
    pub algorithm: crate::certs::Algorithm,
    #[arg(long, default_value_t = crate::certs::LEAF_DAYS_DEFAULT)]
    pub days: i64,
}

/// Certificate subcommands.
#[derive(Debug, Subcommand)]
pub enum CertsCmd {
    /// Create the cluster CA (`ca.crt`, `ca.key`) in a directory of its own. Keep the
    /// key away from every node's directory: only `kura certs` needs it.
    CreateCa {
        #[arg(long, default_value = "kura-ca")]
        dir: PathBuf,
        #[arg(long, default_value = "kura cluster CA")]
        common_name: String,
        #[arg(long, value_enum, default_value = "p256")]
        algorithm: crate::certs::Algorithm,
        #[arg(long, default_value_t = crate::certs::CA_DAYS_DEFAULT)]
        days: i64,
    },
    /// Create a node's certificate (`<name>.crt`, `<name>.key`), naming it
    /// `kura://node/<id>` and valid for the given hosts (DNS names or IP addresses).
    CreateNode {
        /// The node's id in the cluster's config.
        #[arg(long)]
        id: u64,
        /// The node's name (main, dr, bk): the files' name.
        #[arg(long)]
        name: String,
        #[command(flatten)]
        leaf: LeafArgs,
        /// Host names and addresses clients and peers reach the node by.
        #[arg(required = true)]
        hosts: Vec<String>,
    },
    /// Create a named operator's client certificate for the admin plane.
    CreateOperator {
        #[arg(long)]
        name: String,
        /// `admin` changes things; `auditor` reads status, audit and keys status only.
        #[arg(long, value_enum, default_value = "admin")]
        role: crate::net::tls::OperatorRole,
        #[command(flatten)]
        leaf: LeafArgs,
    },
    /// Show the subject, names and expiry of every `.crt` file under a directory.
    List {
        #[arg(default_value = ".")]
        dir: PathBuf,
    },
}

fn issue(
    leaf: &LeafArgs,
    who: &Identity,
    hosts: &[String],
    now: OffsetDateTime,
) -> Result<Issued, CertError> {
    let (ca_crt, ca_key) = read_ca(&leaf.ca_dir)?;
    new_leaf(
        &ca_crt,
        &ca_key,
        Some(who),
        hosts,
        leaf.algorithm,
        now,
        leaf.days,
    )
}

/// Runs one `kura certs` subcommand.
pub fn run(cmd: CertsCmd) -> Result<(), CertError> {
    let now = OffsetDateTime::now_utc();
    let (dir, stem, issued) = match cmd {
        CertsCmd::CreateCa {
            dir,
            common_name,
            algorithm,
            days,
        } => (
            dir,
            "ca".to_owned(),
            new_ca(&common_name, algorithm, now, days)?,
        ),
        CertsCmd::CreateNode {
            id,
            name,
            leaf,
            hosts,
        } => {
            let issued = issue(&leaf, &Identity::Node { id }, &hosts, now)?;
            (leaf.out_dir, name, issued)
        }
        CertsCmd::CreateOperator { name, role, leaf } => {
            let issued = issue(&leaf, &operator(&name, role)?, &[], now)?;
            (leaf.out_dir, name, issued)
        }
        CertsCmd::List { dir } => {
            for c in list(&dir)? {
                println!(
                    "{}\n  subject   {}{}\n  names     {}\n  expires   {}",
                    c.file.display(),
                    c.subject,
                    if c.is_ca { "  (CA)" } else { "" },
                    if c.sans.is_empty() {
                        "-".into()
                    } else {
                        c.sans.join(", ")
                    },
                    c.not_after
                );
            }
            return Ok(());
        }
    };
    let (crt, key) = write(&dir, &stem, &issued)?;
    println!("wrote {} and {} (0600)", crt.display(), key.display());
    Ok(())
}
