//! The `micn` command: parse arguments, start the communicator (MPI under `mpirun`), set up
//! logging with the rank, and call the library. No logic of its own.
use std::process::ExitCode;

use anyhow::Context as _;
use clap::{Parser, Subcommand};
use micn::dist::{self, Backend, Communicator};
use micn::doctor::MpiInfo;
use micn::logging::{self, LogFormat};

#[derive(Parser)]
#[command(name = "micn", version, about = "Data-parallel CTR training with the MICN auxiliary task")]
struct Cli {
    /// Log lines as readable text or as JSON objects (standard error).
    #[arg(long, value_enum, default_value_t = LogFormat::Text, global = true)]
    log_format: LogFormat,
    /// Communicator: `auto` uses MPI when started by mpirun, else a single process.
    #[arg(long, value_enum, default_value_t = Backend::Auto, global = true)]
    comm: Backend,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Report libtorch, CUDA, MPI, the rank layout and thread settings.
    Doctor {
        /// Print the report as JSON.
        #[arg(long)]
        json: bool,
        /// Also run every collective operation across the ranks and check the results.
        #[arg(long)]
        check_comm: bool,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// The communicator with, for MPI, the library's version strings.
fn start_comm(backend: Backend) -> anyhow::Result<(Box<dyn Communicator>, Option<MpiInfo>)> {
    if !backend.wants_mpi() {
        return Ok((Box::new(dist::SingleProcess), None));
    }
    #[cfg(feature = "mpi")]
    {
        let comm = dist::MpiCommunicator::init().context("starting MPI")?;
        let (major, minor) = dist::MpiCommunicator::standard_version();
        let versions =
            MpiInfo { library: dist::MpiCommunicator::library_version(), standard: format!("{major}.{minor}") };
        Ok((Box::new(comm), Some(versions)))
    }
    #[cfg(not(feature = "mpi"))]
    Err(dist::CommError::MpiNotBuilt.into())
}

fn run(cli: Cli) -> anyhow::Result<()> {
    let (comm, mpi_versions) = start_comm(cli.comm)?;
    logging::init(cli.log_format, comm.rank());
    tracing::info!(
        backend = comm.backend(),
        world_size = comm.size(),
        local_rank = comm.local_rank(),
        "communicator ready"
    );
    match cli.command {
        Command::Doctor { json, check_comm } => {
            let report = micn::doctor::collect(comm.as_ref(), mpi_versions)?;
            let check = if check_comm {
                Some(dist::check::run(comm.as_ref()).map_err(|e| anyhow::anyhow!("communicator check failed: {e}"))?)
            } else {
                None
            };
            if comm.rank() == 0 {
                if json {
                    let mut value = serde_json::to_value(&report)?;
                    if let Some(outcome) = &check {
                        value["comm_check"] = serde_json::to_value(outcome)?;
                    }
                    println!("{}", serde_json::to_string_pretty(&value)?);
                } else {
                    print!("{report}");
                    if check.is_some() {
                        println!(
                            "communicator check: every collective gave the expected result on {} rank(s)",
                            comm.size()
                        );
                    }
                }
            }
        }
    }
    Ok(())
}
