//! `appliance token` and `appliance acl`: bearer tokens and access control lists.

use appliance_proto::v1 as pb;
use appliance_proto::v1::security_client::SecurityClient;
use clap::{Args, Subcommand, ValueEnum};
use serde_json::json;

use super::Failure;
use super::client::{ApiChannel, status};
use super::output::{print_json, print_table};

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

#[derive(Debug, Args)]
#[command(group(clap::ArgGroup::new("resource").required(true).args(["topic", "group", "pipeline", "connector", "plugin", "link", "cluster"])))]
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

fn unix_ms_text(ms: i64) -> String {
    if ms == 0 {
        return "never".into();
    }
    let time = std::time::UNIX_EPOCH + std::time::Duration::from_millis(ms as u64);
    humantime::format_rfc3339_seconds(time).to_string()
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
                    unix_ms_text(token.expires_unix_ms)
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
                            unix_ms_text(t.created_unix_ms),
                            unix_ms_text(t.expires_unix_ms),
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
