//! `kura member list | add | remove | replace`: membership changes through the admin
//! plane, with progress while a new member catches up.

use super::client::{admin_client, admin_config_for};
use crate::config::NodeConfig;
use clap::Subcommand;
use kura_sdk::{AddMemberIn, Client, Error, ProblemCode, Role};
use serde_json::Value;
use std::path::Path;
use std::time::{Duration, Instant};

/// `kura member ...`.
#[derive(Debug, Subcommand)]
pub enum MemberCmd {
    /// Every member: id, role, voter or learner, addresses, and (from the leader) how far
    /// behind each is.
    List,
    /// Add a node: it joins as a learner, catches up (by snapshot if it must), then
    /// becomes a voter. Start the new node (empty data directory; its config lists the
    /// current members and itself) before or after.
    Add {
        name: String,
        #[command(flatten)]
        spec: NewMemberArgs,
    },
    /// Remove a member (the leader hands leadership away first). Refused when the
    /// voters left would have no quorum of reachable nodes, or no node that may lead.
    Remove {
        name: String,
        /// Remove it even so.
        #[arg(long)]
        force: bool,
    },
    /// Replace a member by a new node: add the new one, let it catch up, promote it,
    /// then remove the old one.
    Replace {
        /// The member leaving.
        name: String,
        /// The new member's name.
        #[arg(long = "with")]
        with: String,
        #[command(flatten)]
        spec: NewMemberArgs,
    },
}

/// The new member's record.
#[derive(Debug, clap::Args)]
pub struct NewMemberArgs {
    /// Its node id, as its config and certificate name it (default: the next free id).
    #[arg(long)]
    id: Option<u64>,
    /// main, dr or bk (default for `replace`: the old member's).
    #[arg(long, value_parser = parse_role)]
    role: Option<Role>,
    /// host:port of its client API.
    #[arg(long)]
    api: String,
    /// host:port of its peer listener.
    #[arg(long)]
    raft: String,
    /// host:port of its admin plane.
    #[arg(long, default_value = "")]
    admin: String,
    /// It never stands for election (default for `replace`: as the old member).
    #[arg(long)]
    never_lead: Option<bool>,
    /// How long it may take to catch up before the command gives up (it stays a learner).
    #[arg(long, default_value_t = 600)]
    catch_up_timeout_s: u64,
}

fn parse_role(s: &str) -> Result<Role, String> {
    match s {
        "main" => Ok(Role::Main),
        "dr" => Ok(Role::Dr),
        "bk" => Ok(Role::Bk),
        other => Err(format!("role must be main, dr or bk, got {other:?}")),
    }
}

/// Runs `kura member ...` against the cluster of `config`.
pub async fn run(config: &Path, cmd: MemberCmd) -> Result<(), String> {
    let cfg = NodeConfig::load(config).map_err(|e| e.to_string())?;
    let all = admin_client(&cfg, config)?;
    let mut each = Vec::new();
    for ep in cfg.admin_endpoints() {
        let mut c = admin_config_for(&cfg, config, vec![ep])?;
        c.attempts_max = 1;
        c.attempt_timeout = Duration::from_secs(2);
        each.push(Client::new(c));
    }
    let client = Nodes { all, each };
    match cmd {
        MemberCmd::List => list(&client).await,
        MemberCmd::Add { name, spec } => add(&client, &name, spec, None).await,
        MemberCmd::Remove { name, force } => remove(&client, &name, force).await,
        MemberCmd::Replace { name, with, spec } => {
            let members = members(&client).await?;
            let old = members
                .iter()
                .find(|m| m["name"] == name.as_str())
                .ok_or_else(|| format!("no member named {name}"))?
                .clone();
            add(&client, &with, spec, Some(&old)).await?;
            remove(&client, &name, false).await?;
            println!("{name} replaced by {with}");
            Ok(())
        }
    }
}

/// The admin plane: through any node, and each node alone.
struct Nodes {
    all: Client,
    each: Vec<Client>,
}

impl std::ops::Deref for Nodes {
    type Target = Client;
    fn deref(&self) -> &Client {
        &self.all
    }
}

/// The node that says it leads, if one answers.
async fn leader(nodes: &Nodes) -> Option<&Client> {
    for c in &nodes.each {
        if let Ok(r) = c
            .call(http::Method::GET, "/admin/v1/cluster/status", None)
            .await
        {
            if r.body["state"] == "leader" {
                return Some(c);
            }
        }
    }
    None
}

/// The members as the leader sees them (a node's own view when no leader answers: a
/// node removed earlier and still running has a stale one).
async fn members(nodes: &Nodes) -> Result<Vec<Value>, String> {
    let mut any = None;
    for c in &nodes.each {
        let Ok(r) = c
            .call(http::Method::GET, "/admin/v1/cluster/status", None)
            .await
        else {
            continue;
        };
        let members = r.body["members"].as_array().cloned().unwrap_or_default();
        if r.body["state"] == "leader" {
            return Ok(members);
        }
        any.get_or_insert(members);
    }
    any.ok_or_else(|| "no member answers on the admin plane".to_owned())
}

async fn list(client: &Nodes) -> Result<(), String> {
    let members = members(client).await?;
    println!(
        "{:<8} {:>3}  {:<4} {:<7} {:<10} {:<22} {:<22} {:>8}",
        "NAME", "ID", "ROLE", "VOTER", "NEVER_LEAD", "API", "RAFT", "LAG"
    );
    for m in members {
        let lag = m["lag_entries"]
            .as_u64()
            .map_or("-".to_owned(), |l| l.to_string());
        println!(
            "{:<8} {:>3}  {:<4} {:<7} {:<10} {:<22} {:<22} {:>8}",
            m["name"].as_str().unwrap_or("?"),
            m["id"].as_u64().unwrap_or(0),
            m["role"].as_str().unwrap_or("?"),
            if m["voter"] == false {
                "learner"
            } else {
                "voter"
            },
            m["never_lead"].as_bool().unwrap_or(false),
            m["api_addr"].as_str().unwrap_or(""),
            m["raft_addr"].as_str().unwrap_or(""),
            lag,
        );
    }
    Ok(())
}

/// Adds `name` as a learner, waits (printing progress) until it is close enough to
/// the leader, then promotes it. `like`: the member it replaces, for defaults.
async fn add(
    client: &Nodes,
    name: &str,
    spec: NewMemberArgs,
    like: Option<&Value>,
) -> Result<(), String> {
    let role = spec
        .role
        .or_else(|| like.and_then(|m| parse_role(m["role"].as_str()?).ok()))
        .ok_or("--role is required (main, dr or bk)")?;
    let never_lead = spec
        .never_lead
        .or_else(|| like.and_then(|m| m["never_lead"].as_bool()))
        .unwrap_or(role == Role::Bk);
    let req = AddMemberIn {
        name: name.to_owned(),
        id: spec.id,
        role,
        api_addr: spec.api,
        raft_addr: spec.raft,
        admin_addr: spec.admin,
        never_lead,
    };
    let added = client.add_member(&req).await.map_err(|e| e.to_string())?;
    println!(
        "{name} (id {}) added as a learner; the leader is replicating to it",
        added.id
    );
    let deadline = Instant::now() + Duration::from_secs(spec.catch_up_timeout_s);
    let mut last_report = Instant::now() - Duration::from_secs(10);
    loop {
        match client.promote_member(name).await {
            Ok(_) => break,
            Err(Error::Api {
                code: ProblemCode::MemberNotCaughtUp,
                detail,
                ..
            }) => {
                if Instant::now() >= deadline {
                    return Err(format!(
                        "{name} did not catch up within {} s ({detail}); it stays a learner: \
                         check that it runs and reaches the leader, or take it out with \
                         `kura member remove {name}`",
                        spec.catch_up_timeout_s
                    ));
                }
                if last_report.elapsed() >= Duration::from_secs(2) {
                    println!("  catching up: {detail}");
                    last_report = Instant::now();
                }
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
            Err(e) => return Err(e.to_string()),
        }
    }
    println!("{name} is a voter");
    Ok(())
}

/// Removes `name`. An answer lost on the way (the leader crashing mid-change, say) is
/// settled by looking: gone means done, still there means try again.
async fn remove(client: &Nodes, name: &str, force: bool) -> Result<(), String> {
    const ATTEMPTS: u32 = 5;
    for attempt in 1..=ATTEMPTS {
        // Straight to the leader: forwarded through the member leaving, the request
        // is refused (`not_leader`) as soon as the leader stops admitting that member.
        let to = leader(client).await.unwrap_or(&client.all);
        let outcome = to.remove_member(name, force).await;
        let in_doubt = match outcome {
            Ok(()) => break,
            // A retry after an answer that was lost: the first attempt did it.
            Err(Error::Api {
                code: ProblemCode::MemberNotFound,
                ..
            }) if attempt > 1 => break,
            Err(Error::Api {
                code: ProblemCode::OutcomeUnknown | ProblemCode::NotLeader | ProblemCode::NoLeader,
                detail,
                ..
            }) => detail,
            Err(e @ (Error::Ambiguous(_) | Error::Unavailable { .. })) => e.to_string(),
            Err(e) => return Err(e.to_string()),
        };
        tokio::time::sleep(Duration::from_millis(500)).await;
        let members = members(client).await?;
        if !members.iter().any(|m| m["name"] == name) {
            break;
        }
        if attempt == ATTEMPTS {
            return Err(format!(
                "{name} is still a member after {ATTEMPTS} attempts: {in_doubt}"
            ));
        }
    }
    println!("{name} removed{}", if force { " (forced)" } else { "" });
    Ok(())
}
