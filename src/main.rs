//! `baton`: the relay daemon (`run`), its control client (`ctl`), and the
//! load generator (`load`).

#![forbid(unsafe_code)]

mod config;
mod ctl;
mod ctl_args;
mod ctl_top;

mod run;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// An RTP media relay that moves live calls between a user's devices
/// without the far end noticing.
#[derive(Parser)]
#[command(name = "baton", version, about, long_about = None)]
struct Cli {
    #[command(subcommand)]
    command: Commands,
}

#[derive(Subcommand)]
enum Commands {
    /// Run the relay daemon.
    Run(Box<config::RunOptions>),
    /// Send a control command to a running relay; prints JSON.
    Ctl(Box<ctl::CtlArgs>),
    /// Generate and analyse RTP load through a relay (or none).
    Load(Box<baton_load::LoadArgs>),
    /// Print the control protocol's schema (baton.proto).
    Schema,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Commands::Run(options) => run::main(*options),
        Commands::Ctl(args) => ctl::main(*args),
        Commands::Load(args) => baton_load::main(*args),
        Commands::Schema => {
            print!("{}", baton_proto::SCHEMA);
            ExitCode::SUCCESS
        }
    }
}
