//! `baton ctl`: one control command from a shell, JSON out.
//!
//! Exit status: 0 with the response as one JSON object on stdout; 1 when the
//! relay answered with an error (`{"code":…,"message":…}` on stderr); 2 when
//! the relay cannot be reached or the command line is wrong.

use std::io::Write;
use std::process::ExitCode;
use std::time::Duration;

use baton_control::{Client, ClientError, ControlAddr};
use baton_proto::v1::{self, request::Command, response::Result as Reply};
use clap::{Args, Subcommand};

/// Exit status when the relay answered with an error.
const EXIT_RELAY_ERROR: u8 = 1;
/// Exit status when the relay cannot be reached or the usage is wrong.
const EXIT_UNREACHABLE: u8 = 2;

/// Options shared by every `baton ctl` command.
#[derive(Debug, Args)]
pub struct CtlArgs {
    /// The relay's control address: tcp:HOST:PORT or unix:PATH.
    #[arg(long, global = true, env = "BATON_CONTROL", default_value = baton_control::addr::DEFAULT_CONTROL_ADDR)]
    control: String,

    /// Control token, when the relay requires one.
    #[arg(
        long,
        global = true,
        env = "BATON_CONTROL_TOKEN",
        hide_env_values = true
    )]
    token: Option<String>,

    /// Seconds to wait for an answer.
    #[arg(long, global = true, default_value_t = 10)]
    timeout: u64,

    #[command(subcommand)]
    command: CtlCommand,
}

#[derive(Debug, Subcommand)]
enum CtlCommand {
    /// Check that the relay answers; prints its version.
    Ping,
    /// Relay-wide counters.
    Stats,
    /// Print events as they happen, one JSON object per line, until
    /// interrupted or the relay goes away.
    Events,
}

/// Runs one `baton ctl` command; returns its exit status.
pub fn main(args: CtlArgs) -> ExitCode {
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => return fail(&format!("cannot start: {e}")),
    };
    runtime.block_on(run(args))
}

fn fail(message: &str) -> ExitCode {
    eprintln!("baton ctl: {message}");
    ExitCode::from(EXIT_UNREACHABLE)
}

async fn run(args: CtlArgs) -> ExitCode {
    let addr: ControlAddr = match args.control.parse() {
        Ok(addr) => addr,
        Err(e) => return fail(&e.to_string()),
    };
    let client = match Client::connect(&addr, args.token.as_deref()).await {
        Ok(client) => client.with_timeout(Duration::from_secs(args.timeout)),
        Err(e) => return report(e),
    };
    let command = match args.command {
        CtlCommand::Ping => Command::Ping(v1::PingRequest {}),
        CtlCommand::Stats => Command::GetStats(v1::GetStatsRequest {}),
        CtlCommand::Events => return print_events(&client).await,
    };
    match client.call(command).await {
        Ok(reply) => {
            println!("{}", reply_json(reply));
            ExitCode::SUCCESS
        }
        Err(e) => report(e),
    }
}

/// The response message itself as JSON, without the envelope: serialize the
/// envelope (pbjson flattens the oneof) and keep the one field that is not
/// the id.
fn reply_json(reply: Reply) -> serde_json::Value {
    let envelope = v1::Response {
        id: 0,
        result: Some(reply),
    };
    match serde_json::to_value(&envelope) {
        Ok(serde_json::Value::Object(mut fields)) => {
            fields.remove("id");
            fields
                .into_iter()
                .next()
                .map_or(serde_json::Value::Null, |(_, value)| value)
        }
        Ok(other) => other,
        Err(e) => serde_json::json!({ "serialization_error": e.to_string() }),
    }
}

fn report(error: ClientError) -> ExitCode {
    match error {
        ClientError::Status(status) => {
            let code = v1::Code::try_from(status.code)
                .map(|c| c.as_str_name().to_owned())
                .unwrap_or_else(|_| status.code.to_string());
            eprintln!(
                "{}",
                serde_json::json!({ "code": code, "message": status.message })
            );
            ExitCode::from(EXIT_RELAY_ERROR)
        }
        ClientError::Disconnected(Some(status)) => {
            // The relay closed the connection with a reason (a wrong token,
            // the connection limit): that is the relay's answer.
            report(ClientError::Status(status))
        }
        other @ (ClientError::Connect { .. }
        | ClientError::Disconnected(None)
        | ClientError::Protocol(_)
        | ClientError::Timeout(_)) => fail(&other.to_string()),
    }
}

async fn print_events(client: &Client) -> ExitCode {
    if let Err(e) = client.subscribe().await {
        return report(e);
    }
    let mut stdout = std::io::stdout().lock();
    let mut relay_shut_down = false;
    while let Some(event) = client.next_event().await {
        relay_shut_down |= matches!(event.kind, Some(v1::event::Kind::ShuttingDown(_)));
        let line = serde_json::to_string(&event).unwrap_or_default();
        if writeln!(stdout, "{line}")
            .and_then(|()| stdout.flush())
            .is_err()
        {
            // stdout closed (e.g. `| head`): a normal way to stop.
            return ExitCode::SUCCESS;
        }
    }
    if relay_shut_down {
        ExitCode::SUCCESS
    } else {
        fail("the relay closed the connection")
    }
}
