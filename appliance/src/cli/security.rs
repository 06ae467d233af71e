//! `appliance token`, `appliance user`, `appliance acl` and `appliance quota`: bearer tokens,
//! users with passwords, access control lists and quotas.

use std::io::IsTerminal;
use std::path::{Path, PathBuf};

use appliance_proto::v1 as pb;
use appliance_proto::v1::security_client::SecurityClient;
use clap::{Args, Subcommand, ValueEnum};
use serde_json::json;

use super::Failure;
use super::client::{ApiChannel, status};
use super::output::{print_json, print_table, time_text};

#[derive(Debug, Subcommand)]
pub enum TokenCommand {
    /// Make a token for User:NAME; prints the token once (it is stored only as a hash).
    Create {
        name: String,
        /// Lifetime, such as 90d, 12h or 30m; none: it never expires.
        #[arg(long, value_parser = humantime::parse_duration)]
        expires: Option<std::time::Duration>,
        #[arg(long, default_value = "")]
        description: String,
    },
    /// List tokens (never their secrets).
    List {
        #[arg(long)]
        json: bool,
    },
    /// Revoke a token by its id: it is refused from the next request on.
    Revoke { id: String },
}

#[derive(Debug, Subcommand)]
pub enum AclCommand {
    /// Allow (or with --deny, deny) a principal an operation on resources.
    Add(AclArgs),
    /// List the ACLs in force.
    List {
        #[arg(long)]
        json: bool,
    },
    /// Remove an ACL (the same arguments that added it).
    Remove(AclArgs),
}

#[derive(Debug, Subcommand)]
pub enum UserCommand {
    /// Make User:NAME with a password read from standard input (asked for, without echo, on
    /// a terminal) or from --password-file; never from a flag.
    Create {
        name: String,
        #[arg(long)]
        password_file: Option<PathBuf>,
    },
    /// Change a user's password (read as for create).
    Password {
        name: String,
        #[arg(long)]
        password_file: Option<PathBuf>,
    },
    /// List users (never their credentials).
    List {
        #[arg(long)]
        json: bool,
    },
    /// Delete a user: its password is refused from then on.
    Delete { name: String },
}

#[derive(Debug, Subcommand)]
pub enum QuotaCommand {
    /// Set a principal's quota (replacing the one it had); over it, its calls are slowed.
    Set {
        /// User:NAME, Edge:ID, or * for the default of every principal without its own.
        principal: String,
        /// Bytes a second it may produce (record batches as stored).
        #[arg(long)]
        produce_bytes_per_sec: Option<u64>,
        /// Bytes a second it may fetch or be delivered.
        #[arg(long)]
        fetch_bytes_per_sec: Option<u64>,
        /// Requests a second it may make.
        #[arg(long)]
        requests_per_sec: Option<u64>,
    },
    /// List the quotas in force.
    List {
        #[arg(long)]
        json: bool,
    },
    /// Remove a principal's quota.
    Remove { principal: String },
}

#[derive(Debug, Args)]
#[command(group(clap::ArgGroup::new("resource").required(true).args(["topic", "group", "pipeline", "connector", "plugin", "link", "export", "cluster"])))]
pub struct AclArgs {
    /// User:NAME, Edge:ID, or * for every authenticated principal.
    #[arg(long)]
    principal: String,
    /// A topic name, a prefix with --prefixed, or * for every topic.
    #[arg(long)]
    topic: Option<String>,
    #[arg(long)]
    group: Option<String>,
    #[arg(long)]
    pipeline: Option<String>,
    #[arg(long)]
    connector: Option<String>,
    #[arg(long)]
    plugin: Option<String>,
    #[arg(long)]
    link: Option<String>,
    #[arg(long)]
    export: Option<String>,
    /// The appliance itself: tokens, ACLs, edges, metrics.
    #[arg(long)]
    cluster: bool,
    /// The name is a prefix: the ACL covers every name that starts with it.
    #[arg(long)]
    prefixed: bool,
    #[arg(long, value_enum)]
    operation: OperationArg,
    /// Deny instead of allow; a deny wins over every allow.
    #[arg(long)]
    deny: bool,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum OperationArg {
    Read,
    Write,
    Create,
    Delete,
    Alter,
    Describe,
    All,
}

impl AclArgs {
    fn message(self) -> pb::Acl {
        let (resource_type, pattern) = [
            (pb::ResourceType::Topic, self.topic),
            (pb::ResourceType::Group, self.group),
            (pb::ResourceType::Pipeline, self.pipeline),
            (pb::ResourceType::Connector, self.connector),
            (pb::ResourceType::Plugin, self.plugin),
            (pb::ResourceType::Link, self.link),
            (pb::ResourceType::Export, self.export),
        ]
        .into_iter()
        .find_map(|(resource_type, name)| name.map(|name| (resource_type, name)))
        .unwrap_or((pb::ResourceType::Cluster, String::new()));
        let mut message = pb::Acl {
            principal: self.principal,
            pattern,
            ..Default::default()
        };
        message.set_resource_type(resource_type);
        message.set_pattern_type(if self.prefixed {
            pb::PatternType::Prefixed
        } else {
            pb::PatternType::Literal
        });
        message.set_operation(match self.operation {
            OperationArg::Read => pb::AclOperation::Read,
            OperationArg::Write => pb::AclOperation::Write,
            OperationArg::Create => pb::AclOperation::Create,
            OperationArg::Delete => pb::AclOperation::Delete,
            OperationArg::Alter => pb::AclOperation::Alter,
            OperationArg::Describe => pb::AclOperation::Describe,
            OperationArg::All => pb::AclOperation::All,
        });
        message.set_permission(if self.deny {
            pb::AclPermission::Deny
        } else {
            pb::AclPermission::Allow
        });
        message
    }
}

/// The lowercase word of a protobuf enum value's name, without its type's prefix.
fn word(name: &str) -> String {
    name.rsplit('_').next().unwrap_or(name).to_ascii_lowercase()
}

fn acl_row(acl: &pb::Acl) -> Vec<String> {
    vec![
        acl.principal.clone(),
        word(acl.permission().as_str_name()),
        word(acl.operation().as_str_name()),
        word(acl.resource_type().as_str_name()),
        word(acl.pattern_type().as_str_name()),
        acl.pattern.clone(),
    ]
}

const ACL_HEADER: [&str; 6] = [
    "PRINCIPAL",
    "PERMISSION",
    "OPERATION",
    "RESOURCE",
    "PATTERN-TYPE",
    "PATTERN",
];

fn token_json(token: &pb::Token) -> serde_json::Value {
    json!({
        "id": token.id,
        "principal": token.principal,
        "created_unix_ms": token.created_unix_ms,
        "expires_unix_ms": (token.expires_unix_ms > 0).then_some(token.expires_unix_ms),
        "description": token.description,
    })
}

pub async fn token(channel: ApiChannel, command: TokenCommand) -> Result<(), Failure> {
    let mut client = SecurityClient::new(channel);
    match command {
        TokenCommand::Create {
            name,
            expires,
            description,
        } => {
            let created = client
                .create_token(pb::CreateTokenRequest {
                    name,
                    lifetime_ms: expires.map_or(0, |lifetime| lifetime.as_millis() as u64),
                    description,
                })
                .await
                .map_err(status)?
                .into_inner();
            if let Some(token) = &created.token {
                eprintln!(
                    "token {} for {} (expires: {}); it is shown only now:",
                    token.id,
                    token.principal,
                    time_text(token.expires_unix_ms)
                );
            }
            println!("{}", created.secret);
        }
        TokenCommand::List { json } => {
            let tokens = client
                .list_tokens(pb::ListTokensRequest {})
                .await
                .map_err(status)?
                .into_inner()
                .tokens;
            if json {
                print_json(&json!(tokens.iter().map(token_json).collect::<Vec<_>>()));
            } else {
                let rows: Vec<Vec<String>> = tokens
                    .iter()
                    .map(|t| {
                        vec![
                            t.id.clone(),
                            t.principal.clone(),
                            time_text(t.created_unix_ms),
                            time_text(t.expires_unix_ms),
                            t.description.clone(),
                        ]
                    })
                    .collect();
                print_table(
                    &["ID", "PRINCIPAL", "CREATED", "EXPIRES", "DESCRIPTION"],
                    &rows,
                );
            }
        }
        TokenCommand::Revoke { id } => {
            let token = client
                .revoke_token(pb::RevokeTokenRequest { id })
                .await
                .map_err(status)?
                .into_inner();
            println!("revoked token {} of {}", token.id, token.principal);
        }
    }
    Ok(())
}

pub async fn acl(channel: ApiChannel, command: AclCommand) -> Result<(), Failure> {
    let mut client = SecurityClient::new(channel);
    match command {
        AclCommand::Add(args) => {
            let acl = client
                .create_acl(args.message())
                .await
                .map_err(status)?
                .into_inner();
            print_table(&ACL_HEADER, &[acl_row(&acl)]);
        }
        AclCommand::List { json } => {
            let acls = client
                .list_acls(pb::ListAclsRequest {})
                .await
                .map_err(status)?
                .into_inner()
                .acls;
            if json {
                print_json(&json!(
                    acls.iter()
                        .map(|acl| {
                            let row = acl_row(acl);
                            json!({
                                "principal": row[0],
                                "permission": row[1],
                                "operation": row[2],
                                "resource_type": row[3],
                                "pattern_type": row[4],
                                "pattern": row[5],
                            })
                        })
                        .collect::<Vec<_>>()
                ));
            } else {
                let rows: Vec<Vec<String>> = acls.iter().map(acl_row).collect();
                print_table(&ACL_HEADER, &rows);
            }
        }
        AclCommand::Remove(args) => {
            client.delete_acl(args.message()).await.map_err(status)?;
            println!("removed");
        }
    }
    Ok(())
}

fn quota_row(quota: &pb::Quota) -> Vec<String> {
    let rate = |rate: u64| {
        if rate == 0 {
            "-".to_owned()
        } else {
            rate.to_string()
        }
    };
    vec![
        quota.principal.clone(),
        rate(quota.produce_bytes_per_sec),
        rate(quota.fetch_bytes_per_sec),
        rate(quota.requests_per_sec),
    ]
}

const QUOTA_HEADER: [&str; 4] = [
    "PRINCIPAL",
    "PRODUCE-BYTES/S",
    "FETCH-BYTES/S",
    "REQUESTS/S",
];

pub async fn quota(channel: ApiChannel, command: QuotaCommand) -> Result<(), Failure> {
    let mut client = SecurityClient::new(channel);
    match command {
        QuotaCommand::Set {
            principal,
            produce_bytes_per_sec,
            fetch_bytes_per_sec,
            requests_per_sec,
        } => {
            if [produce_bytes_per_sec, fetch_bytes_per_sec, requests_per_sec]
                .iter()
                .all(|rate| rate.unwrap_or(0) == 0)
            {
                return Err(Failure::Usage(anyhow::anyhow!(
                    "give at least one of --produce-bytes-per-sec, --fetch-bytes-per-sec and \
                     --requests-per-sec (`appliance quota remove` removes a quota)"
                )));
            }
            let quota = client
                .set_quota(pb::Quota {
                    principal,
                    produce_bytes_per_sec: produce_bytes_per_sec.unwrap_or(0),
                    fetch_bytes_per_sec: fetch_bytes_per_sec.unwrap_or(0),
                    requests_per_sec: requests_per_sec.unwrap_or(0),
                })
                .await
                .map_err(status)?
                .into_inner();
            print_table(&QUOTA_HEADER, &[quota_row(&quota)]);
        }
        QuotaCommand::List { json } => {
            let quotas = client
                .list_quotas(pb::ListQuotasRequest {})
                .await
                .map_err(status)?
                .into_inner()
                .quotas;
            if json {
                let rate = |rate: u64| (rate > 0).then_some(rate);
                print_json(&json!(
                    quotas
                        .iter()
                        .map(|quota| json!({
                            "principal": quota.principal,
                            "produce_bytes_per_sec": rate(quota.produce_bytes_per_sec),
                            "fetch_bytes_per_sec": rate(quota.fetch_bytes_per_sec),
                            "requests_per_sec": rate(quota.requests_per_sec),
                        }))
                        .collect::<Vec<_>>()
                ));
            } else {
                let rows: Vec<Vec<String>> = quotas.iter().map(quota_row).collect();
                print_table(&QUOTA_HEADER, &rows);
            }
        }
        QuotaCommand::Remove { principal } => {
            client
                .set_quota(pb::Quota {
                    principal,
                    ..Default::default()
                })
                .await
                .map_err(status)?;
            println!("removed");
        }
    }
    Ok(())
}

/// A password: the first line of `file`, else of standard input; a terminal is asked twice,
/// without echo.
fn read_password(file: Option<&Path>, name: &str) -> Result<String, Failure> {
    let first_line = |text: String| text.lines().next().unwrap_or_default().to_owned();
    if let Some(file) = file {
        return std::fs::read_to_string(file)
            .map(first_line)
            .map_err(|e| Failure::Usage(anyhow::anyhow!("reading {}: {e}", file.display())));
    }
    let stdin = std::io::stdin();
    if !stdin.is_terminal() {
        let mut line = String::new();
        stdin
            .read_line(&mut line)
            .map_err(|e| Failure::Runtime(anyhow::anyhow!("reading standard input: {e}")))?;
        return Ok(first_line(line));
    }
    let typed = ask_without_echo(&format!("password for User:{name}: "))?;
    if ask_without_echo("again: ")? != typed {
        return Err(Failure::Usage(anyhow::anyhow!(
            "the two passwords differ; nothing was changed"
        )));
    }
    Ok(typed)
}

fn ask_without_echo(prompt: &str) -> Result<String, Failure> {
    use nix::sys::termios::{LocalFlags, SetArg, tcgetattr, tcsetattr};
    let failed = |e: &dyn std::fmt::Display| Failure::Runtime(anyhow::anyhow!("the terminal: {e}"));
    let stdin = std::io::stdin();
    let saved = tcgetattr(&stdin).map_err(|e| failed(&e))?;
    let mut silent = saved.clone();
    silent.local_flags.remove(LocalFlags::ECHO);
    silent.local_flags.insert(LocalFlags::ECHONL);
    eprint!("{prompt}");
    tcsetattr(&stdin, SetArg::TCSANOW, &silent).map_err(|e| failed(&e))?;
    let mut line = String::new();
    let read = stdin.read_line(&mut line);
    tcsetattr(&stdin, SetArg::TCSANOW, &saved).map_err(|e| failed(&e))?;
    read.map_err(|e| failed(&e))?;
    Ok(line.trim_end_matches(['\n', '\r']).to_owned())
}

fn user_json(user: &pb::User) -> serde_json::Value {
    json!({
        "principal": user.principal,
        "created_unix_ms": user.created_unix_ms,
        "password_changed_unix_ms": user.password_changed_unix_ms,
    })
}

pub async fn user(channel: ApiChannel, command: UserCommand) -> Result<(), Failure> {
    let mut client = SecurityClient::new(channel);
    match command {
        UserCommand::Create {
            name,
            password_file,
        } => {
            let password = read_password(password_file.as_deref(), &name)?;
            let user = client
                .create_user(pb::SetPasswordRequest { name, password })
                .await
                .map_err(status)?
                .into_inner();
            println!("created {}", user.principal);
        }
        UserCommand::Password {
            name,
            password_file,
        } => {
            let password = read_password(password_file.as_deref(), &name)?;
            let user = client
                .change_password(pb::SetPasswordRequest { name, password })
                .await
                .map_err(status)?
                .into_inner();
            println!("changed the password of {}", user.principal);
        }
        UserCommand::List { json } => {
            let users = client
                .list_users(pb::ListUsersRequest {})
                .await
                .map_err(status)?
                .into_inner()
                .users;
            if json {
                print_json(&json!(users.iter().map(user_json).collect::<Vec<_>>()));
            } else {
                let rows: Vec<Vec<String>> = users
                    .iter()
                    .map(|u| {
                        vec![
                            u.principal.clone(),
                            time_text(u.created_unix_ms),
                            time_text(u.password_changed_unix_ms),
                        ]
                    })
                    .collect();
                print_table(&["PRINCIPAL", "CREATED", "PASSWORD-CHANGED"], &rows);
            }
        }
        UserCommand::Delete { name } => {
            let user = client
                .delete_user(pb::DeleteUserRequest { name })
                .await
                .map_err(status)?
                .into_inner();
            println!("deleted {}", user.principal);
        }
    }
    Ok(())
}
