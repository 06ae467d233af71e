//! `appliance query "SQL"`: SQL over the topics of a running appliance (gRPC `Query`), printed
//! as an aligned table, JSON or CSV; `--describe TABLE` shows a table's topics and columns.

use std::io::IsTerminal;

use appliance_proto::v1 as pb;
use appliance_proto::v1::query_client::QueryClient;
use clap::{Args, ValueEnum};
use datafusion::arrow::array::RecordBatch;
use datafusion::arrow::datatypes::SchemaRef;
use datafusion::arrow::ipc::reader::StreamReader;

use super::Failure;
use super::client::{ApiChannel, status};
use super::output::print_table;

#[derive(Debug, Args)]
pub struct QueryArgs {
    /// One SQL statement, e.g. "SELECT _edge, avg(temp) FROM sensors GROUP BY _edge".
    #[arg(required_unless_present = "describe")]
    sql: Option<String>,
    /// Show a table's topics and columns instead of running SQL.
    #[arg(long, value_name = "TABLE", conflicts_with = "sql")]
    describe: Option<String>,
    /// Keep the answer current: print it again whenever records arrive (until Ctrl-C).
    #[arg(long)]
    follow: bool,
    #[arg(long, value_enum, default_value = "table")]
    format: Format,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum Format {
    Table,
    Json,
    Csv,
}

pub async fn query(channel: ApiChannel, args: QueryArgs) -> Result<(), Failure> {
    // The appliance bounds answers (query.max-answer-mb); gRPC's 4 MB default would refuse
    // answers it allows.
    let mut client = QueryClient::new(channel).max_decoding_message_size(usize::MAX);
    if let Some(table) = args.describe {
        let description = client
            .describe(pb::DescribeRequest { table })
            .await
            .map_err(status)?
            .into_inner();
        println!(
            "table {} ({})",
            description.table,
            description.topics.join(", ")
        );
        let rows: Vec<Vec<String>> = description
            .columns
            .iter()
            .map(|c| {
                vec![
                    c.name.clone(),
                    c.r#type.clone(),
                    if c.nullable { "yes" } else { "no" }.to_owned(),
                    if c.r#virtual {
                        "virtual"
                    } else if c.declared {
                        "declared"
                    } else {
                        "inferred"
                    }
                    .to_owned(),
                ]
            })
            .collect();
        print_table(&["COLUMN", "TYPE", "NULLABLE", "FROM"], &rows);
        return Ok(());
    }
    let request = pb::ExecuteRequest {
        sql: args.sql.unwrap_or_default(),
        format: match args.format {
            Format::Json => pb::AnswerFormat::Json,
            Format::Table | Format::Csv => pb::AnswerFormat::Arrow,
        }
        .into(),
    };
    if args.follow {
        let mut answers = client.follow(request).await.map_err(status)?.into_inner();
        let terminal = std::io::stdout().is_terminal();
        while let Some(answer) = answers.message().await.map_err(status)? {
            if matches!(args.format, Format::Json) {
                println!("{}", answer.json);
                continue;
            }
            if terminal {
                print!("\x1b[2J\x1b[H");
            }
            println!("{}\n({} rows)\n", render_table(&answer)?, answer.rows);
        }
        return Ok(());
    }
    let answer = client.execute(request).await.map_err(status)?.into_inner();
    match args.format {
        Format::Json => println!("{}", answer.json),
        Format::Csv => {
            let (_, batches) = decode(&answer)?;
            let mut writer = datafusion::arrow::csv::WriterBuilder::new()
                .with_header(true)
                .build(std::io::stdout());
            for batch in &batches {
                writer.write(batch).map_err(arrow_failure)?;
            }
        }
        Format::Table => {
            println!("{}", render_table(&answer)?);
            println!("({} rows)", answer.rows);
        }
    }
    Ok(())
}

fn arrow_failure(error: datafusion::arrow::error::ArrowError) -> Failure {
    Failure::Runtime(anyhow::anyhow!("the answer's Arrow stream: {error}"))
}

/// The schema and rows of an answer's Arrow IPC stream.
fn decode(answer: &pb::ExecuteResponse) -> Result<(SchemaRef, Vec<RecordBatch>), Failure> {
    let reader = StreamReader::try_new(answer.arrow_ipc.as_ref(), None).map_err(arrow_failure)?;
    let schema = reader.schema();
    let batches = reader
        .collect::<Result<Vec<_>, _>>()
        .map_err(arrow_failure)?;
    Ok((schema, batches))
}

/// An answer as an aligned table with a header (also when it has no rows).
pub(super) fn render_table(answer: &pb::ExecuteResponse) -> Result<String, Failure> {
    let (schema, batches) = decode(answer)?;
    Ok(
        datafusion::arrow::util::pretty::pretty_format_batches_with_schema(schema, &batches)
            .map_err(arrow_failure)?
            .to_string(),
    )
}
