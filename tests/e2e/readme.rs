//! The README, run: every ```` ```sh ```` and ```` ```bash ```` block of
//! `README.md`, in order, in one shell, in a fresh directory, against brokers
//! started the way the README starts them. The blocks are read from the README
//! at test time, so the README cannot drift from what works.
//!
//! The conventions a README author keeps to:
//!
//! - A block that is not meant to run (it runs this test, or takes a quarter
//!   of an hour) is preceded by `<!-- not run: REASON -->` on the line before
//!   its fence. Use it sparingly; the reason is required.
//! - Every other command must succeed (`bash -eEu -o pipefail`). A command
//!   the README expects to fail says so in shell: `cmd || [ $? = 3 ]`.
//! - Long-running commands, on a line of their own, are started in the
//!   background and waited for until they answer: `make run` and
//!   `tesserad …` (a broker, ready when its `/readyz` answers), `make
//!   example-server` (the example resource server). `make run` while the
//!   broker of `make run` runs is "already running". A block that starts
//!   `tesserad …` first stops the running broker (Ctrl-C, as the README tells
//!   the reader to). Everything started is stopped when the test ends.
//! - Ports are free loopback ports picked by the test: the broker honours
//!   `TESSERA_SERVER__LISTEN`, `TESSERA_SERVER__HTTP_LISTEN` and
//!   `TESSERA_OAUTH__LISTEN`, the CLI, the demo and the examples
//!   `TESSERA_ENDPOINT`, the example server `EXAMPLE_LISTEN` and the example
//!   agent `EXAMPLE_SERVER`. The README's default addresses
//!   (`127.0.0.1:7443`, `:7444`, `:7445`, `:8081`) in commands are rewritten
//!   to the picked ports.
//! - `make` runs with `CARGO=true BIN=<the built binaries>`: its build steps
//!   are no-ops and it installs and runs the binaries the other tests use
//!   (never `cargo` inside the test). `HOME` is a fresh directory, so
//!   `make install` installs into it; `PATH` holds only the system's
//!   directories until the README extends it.
//! - The working directory holds a copy of the `Makefile` and `deploy/` and a
//!   link to `sdk/python/`, as a fresh clone does, and nothing else. The
//!   Python venv `make test` made is linked at `~/.cache/tessera/venv`, where
//!   `make python-venv` keeps it, so the Python section runs without PyPI.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    reason = "test"
)]

use std::fmt::Write as _;
use std::os::unix::process::CommandExt as _;
use std::path::Path;
use std::process::{Command, Stdio};

use tessera_e2e::{TempDir, bin_dir};

/// Upper bound on the whole script, not a timed assertion: only a command
/// that never returns reaches it.
const SCRIPT_TIMEOUT_SECS: u32 = 600;

/// One runnable block of the README.
#[derive(Debug)]
struct Block {
    /// 1-based line of the README of the block's first line of code.
    first_line: usize,
    lines: Vec<String>,
}

/// The blocks of `markdown` that run, in order; panics on a `not run`
/// marker without a reason or not followed by a shell block.
fn runnable_blocks(markdown: &str) -> Vec<Block> {
    let mut blocks = Vec::new();
    let mut skip: Option<(usize, String)> = None;
    let mut lines = markdown.lines().enumerate();
    while let Some((i, line)) = lines.next() {
        let trimmed = line.trim();
        if let Some(rest) = trimmed.strip_prefix("<!-- not run:") {
            let reason = rest.trim_end_matches("-->").trim();
            assert!(!reason.is_empty(), "README.md:{}: `not run` without a reason", i + 1);
            skip = Some((i + 1, reason.to_owned()));
            continue;
        }
        let Some(info) = trimmed.strip_prefix("```") else {
            if let Some((at, _)) = &skip {
                assert!(
                    trimmed.is_empty(),
                    "README.md:{at}: `not run` is not followed by a code block"
                );
            }
            continue;
        };
        let shell = matches!(info.trim(), "sh" | "bash");
        let mut code = Vec::new();
        for (_, line) in lines.by_ref() {
            if line.trim() == "```" {
                break;
            }
            code.push(line.to_owned());
        }
        match skip.take() {
            Some((at, _)) => assert!(shell, "README.md:{at}: `not run` before a block that is not sh/bash"),
            None if shell => blocks.push(Block {
                first_line: i + 2,
                lines: code,
            }),
            None => {}
        }
    }
    blocks
}

/// A long-running command the test starts in the background.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Service {
    /// A broker (`make run`, `tesserad …`); answers on the HTTP port's `/readyz`.
    Broker,
    /// The example resource server; answers on its port.
    ExampleServer,
}

/// The service a README line starts, if it is one.
fn service(line: &str) -> Option<(Service, String)> {
    // Shell comments in these lines never hold a `#` inside quotes.
    let command = line.split(" #").next().unwrap_or_default().trim();
    let command = command.trim_end_matches('&').trim();
    if command == "make run" || command.starts_with("tesserad ") {
        Some((Service::Broker, command.to_owned()))
    } else if command == "make example-server" {
        Some((Service::ExampleServer, command.to_owned()))
    } else {
        None
    }
}

/// The picked free loopback addresses.
struct Ports {
    grpc: String,
    http: String,
    oauth: String,
    example: String,
}

impl Ports {
    fn pick() -> Self {
        // Held together so the four are distinct; released before use.
        let listeners: Vec<_> = (0..4)
            .map(|_| std::net::TcpListener::bind("127.0.0.1:0").unwrap())
            .collect();
        let addr = |i: usize| listeners[i].local_addr().unwrap().to_string();
        Self {
            grpc: addr(0),
            http: addr(1),
            oauth: addr(2),
            example: addr(3),
        }
    }

    /// `line` with the README's default addresses replaced by the picked ones.
    fn rewrite(&self, line: &str) -> String {
        line.replace("127.0.0.1:7443", &self.grpc)
            .replace("127.0.0.1:7444", &self.http)
            .replace("127.0.0.1:7445", &self.oauth)
            .replace("127.0.0.1:8081", &self.example)
    }
}

fn single_quoted(s: &str) -> String {
    format!("'{}'", s.replace('\'', r"'\''"))
}

/// The shell functions the generated script starts with.
const PRELUDE: &str = r#"set -eEuo pipefail
make() { command make CARGO=true BIN="$__BIN" "$@"; }
__broker=
__broker_command=
__services=()
# Stops a background service and everything it started (its process group), as Ctrl-C does.
__stop() {
  kill -INT -- "-$1" 2>/dev/null || true
  wait "$1" 2>/dev/null || true
  while kill -0 -- "-$1" 2>/dev/null; do sleep 0.1; done
}
# Stops the running broker: a block that starts `tesserad` tells the reader to.
__stop_broker() {
  if [ -n "$__broker" ]; then
    echo "+ (stopping the broker of \`$__broker_command\`, as the README says)"
    __stop "$__broker"
    __broker=
  fi
}
# Starts a long-running README command in the background and waits until it answers.
__start() {
  local kind=$1 url=$2 log=$3 command=$4 pid
  if [ "$kind" = broker ] && [ -n "$__broker" ]; then
    if [ "$command" = "$__broker_command" ]; then
      echo "+ $command   (already running)"
      return 0
    fi
    __stop_broker
  fi
  echo "+ $command   (in the background, output in $log)"
  set -m
  eval "$command" >"$log" 2>&1 </dev/null &
  pid=$!
  set +m
  echo "$pid" >>"$__PIDS"
  __services+=("$pid")
  if [ "$kind" = broker ]; then __broker=$pid; __broker_command=$command; fi
  local deadline=$((SECONDS + 120))
  until curl -s -o /dev/null "$url"; do
    if ! kill -0 "$pid" 2>/dev/null || [ "$SECONDS" -gt "$deadline" ]; then
      echo "__README_SERVICE_FAILED__ $command" >&2
      cat "$log" >&2
      return 1
    fi
    sleep 0.1
  done
}
# The README's own background jobs (`... &`) hold the output pipes open: end them too.
__cleanup() {
  local pid
  for pid in "${__services[@]}"; do kill -KILL -- "-$pid" 2>/dev/null || true; done
  for pid in $(jobs -p); do kill -KILL "$pid" 2>/dev/null || true; done
}
trap '__cleanup' EXIT
trap 'echo "__README_FAILED__ $LINENO $BASH_COMMAND" >&2' ERR
"#;

/// The script: the prelude, then every block, services replaced by `__start`.
/// Returns it with the README line of each script line (0: not from the README).
fn script(blocks: &[Block], ports: &Ports, logs: &Path) -> (String, Vec<usize>) {
    let mut text = String::from(PRELUDE);
    let mut origin = vec![0; PRELUDE.lines().count()];
    let mut n = 0;
    for block in blocks {
        let starts_tesserad = block
            .lines
            .iter()
            .any(|l| matches!(service(l), Some((Service::Broker, c)) if c.starts_with("tesserad ")));
        if starts_tesserad {
            text.push_str("__stop_broker\n");
            origin.push(0);
        }
        for (i, line) in block.lines.iter().enumerate() {
            let line = ports.rewrite(line);
            match service(&line) {
                Some((kind, command)) => {
                    n += 1;
                    let (kind, url) = match kind {
                        Service::Broker => ("broker", format!("http://{}/readyz", ports.http)),
                        Service::ExampleServer => ("example", format!("http://{}/", ports.example)),
                    };
                    let log = logs.join(format!("service-{n}.log"));
                    writeln!(
                        text,
                        "__start {kind} {url} {} {}",
                        single_quoted(&log.display().to_string()),
                        single_quoted(&command)
                    )
                    .unwrap();
                }
                None => writeln!(text, "{line}").unwrap(),
            }
            origin.push(block.first_line + i);
        }
    }
    (text, origin)
}

/// Copies `from` into `to` recursively (files and directories only).
fn copy_tree(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_tree(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), &target).unwrap();
        }
    }
}

/// Kills the process group `pgid` if any of it is left.
fn kill_group(pgid: i32) {
    if let Some(pid) = rustix::process::Pid::from_raw(pgid) {
        let _ = rustix::process::kill_process_group(pid, rustix::process::Signal::KILL);
    }
}

#[test]
fn every_shell_block_of_the_readme_runs_as_written() {
    let repo = Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap().to_path_buf();
    let readme = std::fs::read_to_string(repo.join("README.md")).unwrap();
    let blocks = runnable_blocks(&readme);
    assert!(
        blocks.iter().flat_map(|b| &b.lines).any(|l| service(l).is_some()),
        "the README starts no broker: is this README.md?"
    );

    let dir = TempDir::new("readme");
    let work = dir.path().join("clone");
    std::fs::create_dir_all(&work).unwrap();
    std::fs::copy(repo.join("Makefile"), work.join("Makefile")).unwrap();
    copy_tree(&repo.join("deploy"), &work.join("deploy"));
    // The SDK itself, not a copy: the shared venv's editable install stays
    // on this checkout (`make python-venv` re-points it when the path differs).
    std::fs::create_dir_all(work.join("sdk")).unwrap();
    std::os::unix::fs::symlink(repo.join("sdk/python"), work.join("sdk/python")).unwrap();
    let home = dir.path().join("home");
    let logs = dir.path().join("logs");
    std::fs::create_dir_all(&home).unwrap();
    std::fs::create_dir_all(&logs).unwrap();
    // The Python section's `make python-venv`: the venv make test already
    // made (linked under the target directory), where the README's reader
    // has it, so nothing is installed from PyPI again.
    let venv = bin_dir().parent().unwrap().join("pyjose-venv");
    if let Ok(venv) = venv.canonicalize() {
        std::fs::create_dir_all(home.join(".cache/tessera")).unwrap();
        std::os::unix::fs::symlink(venv, home.join(".cache/tessera/venv")).unwrap();
    }
    let pids = dir.path().join("pids");

    let ports = Ports::pick();
    let (text, origin) = script(&blocks, &ports, &logs);
    let script_path = dir.path().join("readme.sh");
    std::fs::write(&script_path, &text).unwrap();

    let bin = bin_dir();
    // A README command that never returns would hang the suite: coreutils'
    // timeout ends the script (status 124) long after any sane run (~15 s).
    let mut cmd = Command::new("timeout");
    cmd.args(["--kill-after=10", &SCRIPT_TIMEOUT_SECS.to_string(), "bash"])
        .arg(&script_path)
        .current_dir(&work)
        // A fresh environment: nothing of the developer's (no TESSERA_*, no
        // tessera on PATH) leaks into what the README promises.
        .env_clear()
        .env("HOME", &home)
        .env("PATH", "/usr/bin:/bin")
        .env("LANG", "C.UTF-8")
        .env("TMPDIR", dir.path())
        .env("__BIN", &bin)
        .env("__PIDS", &pids)
        .env("TESSERA_SERVER__LISTEN", &ports.grpc)
        .env("TESSERA_SERVER__HTTP_LISTEN", &ports.http)
        .env("TESSERA_OAUTH__LISTEN", &ports.oauth)
        .env("TESSERA_ENDPOINT", format!("https://{}", ports.grpc))
        .env("EXAMPLE_LISTEN", &ports.example)
        .env("EXAMPLE_SERVER", &ports.example)
        .stdin(Stdio::null())
        // Its own process group, so whatever it leaves behind is killed below.
        .process_group(0);
    let child = cmd.stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap();
    let pgid = i32::try_from(child.id()).unwrap();
    let out = child.wait_with_output().unwrap();
    kill_group(pgid);
    for pid in std::fs::read_to_string(&pids).unwrap_or_default().lines() {
        kill_group(pid.parse().unwrap());
    }

    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    if out.status.success() {
        // Shown with --nocapture, to see what the README's commands printed.
        println!("{stdout}\n{stderr}");
        return;
    }
    let readme_lines: Vec<&str> = readme.lines().collect();
    let failed = stderr
        .lines()
        .rev()
        .find_map(|l| l.strip_prefix("__README_FAILED__ "))
        .and_then(|rest| {
            let (line, command) = rest.split_once(' ')?;
            let line: usize = line.parse().ok()?;
            Some((
                origin.get(line.checked_sub(1)?).copied().unwrap_or(0),
                command.to_owned(),
            ))
        });
    let tail = |s: &str| {
        s.lines()
            .rev()
            .take(60)
            .collect::<Vec<_>>()
            .into_iter()
            .rev()
            .collect::<Vec<_>>()
            .join("\n")
    };
    if out.status.code() == Some(124) {
        panic!(
            "the README's commands did not finish in {SCRIPT_TIMEOUT_SECS} s: one of them waits \
             forever\n--- stdout (last lines) ---\n{}\n--- stderr (last lines) ---\n{}",
            tail(&stdout),
            tail(&stderr)
        );
    }
    let place = match failed {
        Some((line, command)) if line > 0 => format!(
            "README.md:{line}: `{}` failed (command `{command}`)",
            readme_lines.get(line - 1).copied().unwrap_or_default().trim()
        ),
        Some((_, command)) => format!("the harness's `{command}` failed"),
        None => "the script ended early".to_owned(),
    };
    panic!(
        "{place} ({})\n--- stdout (last lines) ---\n{}\n--- stderr (last lines) ---\n{}",
        out.status,
        tail(&stdout),
        tail(&stderr)
    );
}

#[test]
fn blocks_and_markers_are_read_as_documented() {
    let md = "text\n```sh\na\nb\n```\n<!-- not run: slow -->\n```bash\nc\n```\n```toml\nd\n```\n```bash\ne\n```\n";
    let blocks = runnable_blocks(md);
    let got: Vec<(usize, Vec<String>)> = blocks.into_iter().map(|b| (b.first_line, b.lines)).collect();
    assert_eq!(got, vec![(3, vec!["a".into(), "b".into()]), (14, vec!["e".into()])]);
    assert_eq!(
        service("make run     # builds, starts"),
        Some((Service::Broker, "make run".into()))
    );
    assert_eq!(
        service("tesserad --config .tessera-dev/tesserad.toml &"),
        Some((Service::Broker, "tesserad --config .tessera-dev/tesserad.toml".into()))
    );
    assert_eq!(service("make demo    # in a second terminal"), None);
    assert_eq!(service("tessera --as alice keys ls"), None);
}

#[test]
#[should_panic(expected = "without a reason")]
fn a_not_run_marker_needs_a_reason() {
    runnable_blocks("<!-- not run: -->\n```sh\nx\n```\n");
}

#[test]
#[should_panic(expected = "not followed by a code block")]
fn a_not_run_marker_sits_right_before_its_block() {
    runnable_blocks("<!-- not run: slow -->\nsome text\n```sh\nx\n```\n");
}
