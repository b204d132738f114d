//! `tessera audit verify|tail`: check and read the broker's JSON-lines audit
//! file, or verify a replica's Redis audit stream. No broker needed.

use std::fmt::Write as _;
use std::fs::File;
use std::io::{self, BufRead as _, BufReader};
use std::os::unix::fs::FileExt as _;
use std::path::{Path, PathBuf};

use anyhow::Context as _;
use chrono::SecondsFormat;
use clap::{Args, Subcommand};
use serde::Serialize;
use tessera_core::audit::{AuditRecord, ChainError, Verifier, VerifyReport};

use crate::cli::Global;
use crate::output::{self, OutputFormat};

/// The first read size when reading a file from its end.
const TAIL_CHUNK: u64 = 64 * 1024;

/// Audit file commands.
#[derive(Debug, Subcommand)]
pub(crate) enum AuditCommand {
    /// Check an audit file's hash chain. Exit 0 when intact; exit 1 naming
    /// the first line where a record was edited, removed, inserted or
    /// reordered. Compare the last hash with one kept elsewhere to catch a
    /// file cut short or rewritten from some point on.
    Verify(VerifyArgs),
    /// Print the last records of an audit file, oldest first (not checked:
    /// see `audit verify`).
    Tail(TailArgs),
}

/// `audit verify`.
#[derive(Debug, Args)]
pub(crate) struct VerifyArgs {
    /// The audit file (JSON lines, as the broker writes it).
    #[arg(value_name = "FILE", required_unless_present = "redis", conflicts_with = "redis")]
    file: Option<PathBuf>,
    /// Verify a replica's Redis audit stream instead (`[audit] redis_stream`),
    /// read from this standalone Redis or cluster node URL.
    #[arg(long, value_name = "URL", requires = "instance")]
    redis: Option<String>,
    /// The replica whose stream to verify (its `[server] instance_id`).
    #[arg(long, value_name = "ID")]
    instance: Option<String>,
    /// The broker's `[store] key_prefix`.
    #[arg(long, value_name = "PREFIX", default_value = "tessera")]
    key_prefix: String,
}

/// `audit tail`.
#[derive(Debug, Args)]
pub(crate) struct TailArgs {
    /// The audit file (JSON lines, as the broker writes it).
    #[arg(value_name = "FILE")]
    file: PathBuf,
    /// How many records to print.
    #[arg(short = 'n', long = "lines", default_value_t = 10, value_name = "N")]
    lines: usize,
}

/// Runs an audit command.
pub(crate) async fn run(global: &Global, cmd: AuditCommand) -> anyhow::Result<()> {
    match cmd {
        AuditCommand::Verify(VerifyArgs { file: Some(file), .. }) => {
            let checked = check(&file)?;
            report(global.output, &file.display().to_string(), checked)
        }
        AuditCommand::Verify(VerifyArgs {
            redis: Some(url),
            instance: Some(instance),
            key_prefix,
            ..
        }) => {
            let (name, checked) = check_stream(&url, &key_prefix, &instance).await?;
            report(global.output, &name, checked)
        }
        AuditCommand::Verify(_) => anyhow::bail!("give an audit FILE, or --redis URL with --instance ID"),
        AuditCommand::Tail(args) => tail(global.output, &args.file, args.lines),
    }
}

/// The outcome of `verify` in JSON.
#[derive(Debug, Serialize)]
struct VerifyView<'a> {
    /// The file's path, or `redis:<stream key>`.
    file: &'a str,
    intact: bool,
    /// Records verified (before the broken line, if any).
    records: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    last_hash: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    line: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    problem: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    message: Option<String>,
}

fn report(format: OutputFormat, path: &str, checked: Checked) -> anyhow::Result<()> {
    match checked {
        Ok(report) => match format {
            OutputFormat::Json => output::json(&VerifyView {
                file: path,
                intact: true,
                records: report.records,
                last_hash: Some(&report.last_hash),
                line: None,
                problem: None,
                message: None,
            }),
            OutputFormat::Text => {
                output::line(format_args!(
                    "{} records, chain intact, last hash {}",
                    report.records, report.last_hash
                ))?;
                Ok(())
            }
        },
        Err((err, records)) => {
            if format == OutputFormat::Json {
                output::json(&VerifyView {
                    file: path,
                    intact: false,
                    records,
                    last_hash: None,
                    line: Some(err.line()),
                    problem: Some(problem(&err)),
                    message: Some(err.to_string()),
                })?;
            }
            anyhow::bail!("audit trail `{path}` is not intact: {err}")
        }
    }
}

/// A chain that held, or where it broke and how many records held before.
type Checked = Result<VerifyReport, (ChainError, u64)>;

/// Verifies the file line by line; on a break, also how many records held.
fn check(path: &Path) -> anyhow::Result<Checked> {
    let file = File::open(path).with_context(|| format!("cannot read `{}`", path.display()))?;
    let size = file.metadata().map(|m| m.len()).unwrap_or(0);
    let progress = crate::progress::Progress::bar("verifying", size, true);
    let mut verifier = Verifier::new();
    for line in BufReader::new(file).split(b'\n') {
        let line = line.with_context(|| format!("cannot read `{}`", path.display()))?;
        progress.inc(line.len() as u64 + 1);
        // Bytes that are not UTF-8 become U+FFFD, which no record's hash covers.
        if let Err(err) = verifier.push(&String::from_utf8_lossy(&line)) {
            progress.finish();
            return Ok(Err((err, verifier.records())));
        }
    }
    progress.finish();
    Ok(Ok(verifier.finish()))
}

/// Verifies a replica's audit stream entry by entry, page by page. A break
/// is reported at its entry's position in the stream (1 = first entry).
async fn check_stream(url: &str, prefix: &str, instance: &str) -> anyhow::Result<(String, Checked)> {
    use tessera_store::{AuditStream, MAX_AUDIT_PAGE, RedisConfig, RedisDeployment};
    let config = RedisConfig {
        key_prefix: prefix.to_owned(),
        ..RedisConfig::new(RedisDeployment::Standalone { url: url.to_owned() })
    };
    let stream = AuditStream::connect(&config, instance)
        .await
        .context("cannot reach redis")?;
    let name = format!("redis:{}", stream.key());
    let mut verifier = Verifier::new();
    let mut after: Option<String> = None;
    let progress = crate::progress::Progress::counter("verifying", "records");
    loop {
        let page = stream
            .read(after.as_deref(), MAX_AUDIT_PAGE)
            .await
            .with_context(|| format!("cannot read `{name}`"))?;
        let Some((last, _)) = page.last() else { break };
        let last = last.clone();
        progress.inc(page.len() as u64);
        for (_, line) in &page {
            if let Err(err) = verifier.push(line) {
                progress.finish();
                return Ok((name, Err((err, verifier.records()))));
            }
        }
        after = Some(last);
    }
    progress.finish();
    if verifier.records() == 0 {
        anyhow::bail!("`{name}` holds no audit records (wrong --instance or --key-prefix?)");
    }
    Ok((name, Ok(verifier.finish())))
}

/// A short, stable name for scripts.
fn problem(err: &ChainError) -> &'static str {
    match err {
        ChainError::Malformed { .. } => "malformed",
        ChainError::Edited { .. } => "edited",
        ChainError::Sequence { .. } => "sequence",
        ChainError::Broken { .. } => "broken",
        _ => "other",
    }
}

fn tail(format: OutputFormat, path: &Path, count: usize) -> anyhow::Result<()> {
    let lines = read_tail(path, count, TAIL_CHUNK).with_context(|| format!("cannot read `{}`", path.display()))?;
    for line in lines {
        let text = String::from_utf8_lossy(&line);
        let record: AuditRecord = serde_json::from_str(&text).map_err(|_| {
            anyhow::anyhow!(
                "a line near the end of `{}` is not an audit record; `tessera audit verify` says which",
                path.display()
            )
        })?;
        match format {
            OutputFormat::Json => output::line(record.to_line())?,
            OutputFormat::Text => output::line(summary(&record))?,
        }
    }
    Ok(())
}

/// The last `count` lines of the file, oldest first, reading from the end.
fn read_tail(path: &Path, count: usize, first_chunk: u64) -> io::Result<Vec<Vec<u8>>> {
    let file = File::open(path)?;
    let len = file.metadata()?.len();
    if count == 0 || len == 0 {
        return Ok(Vec::new());
    }
    let mut chunk = first_chunk.max(1);
    loop {
        let start = len.saturating_sub(chunk);
        let size = usize::try_from(len.saturating_sub(start)).map_err(io::Error::other)?;
        let mut buf = vec![0; size];
        file.read_exact_at(&mut buf, start)?;
        if buf.last() == Some(&b'\n') {
            buf.pop();
        }
        // Newest first; unless the read reached the start of the file, the
        // oldest piece may be part of a line.
        let newest: Vec<&[u8]> = buf.rsplit(|&b| b == b'\n').collect();
        if start == 0 || newest.len() > count {
            let mut lines: Vec<Vec<u8>> = newest.into_iter().take(count).map(<[u8]>::to_vec).collect();
            lines.reverse();
            return Ok(lines);
        }
        chunk = chunk.saturating_mul(2);
    }
}

/// One record on one line, for people. Free text is escaped: records carry
/// what callers sent, and a terminal must not interpret it.
fn summary(record: &AuditRecord) -> String {
    let event = &record.event;
    let mut out = format!(
        "{:>6}  {}  {}  {}",
        record.seq,
        event.at.to_rfc3339_opts(SecondsFormat::AutoSi, true),
        event.event,
        event.decision
    );
    let mut field = |key: &str, value: &str| {
        let _ = write!(out, "  {key}={}", value.escape_debug());
    };
    if let Some(who) = &event.who {
        field("who", &who.identity);
    }
    let optional = [
        ("task", &event.task_id),
        ("grant", &event.grant_id),
        ("aud", &event.audience),
        ("class", &event.class),
        ("schema", &event.schema_version),
        ("approver", &event.approver),
        ("request", &event.request_id),
    ];
    for (key, value) in optional {
        if let Some(value) = value {
            field(key, value);
        }
    }
    if !event.scopes.is_empty() {
        field("scopes", &event.scopes.join(","));
    }
    if let Some(ttl) = event.ttl_secs {
        field("ttl", &output::seconds(u64::from(ttl)));
    }
    if !event.policy_ids.is_empty() {
        field("policy", &event.policy_ids.join(","));
    }
    if let Some(count) = event.count {
        field("count", &count.to_string());
    }
    field("instance", &event.instance);
    if let Some(reason) = &event.reason {
        let _ = write!(out, "  reason={reason:?}");
    }
    out
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, reason = "test")]

    use chrono::DateTime;
    use tessera_core::audit::{Actor, AuditEvent, AuditKind, Chain, Outcome};

    use super::*;

    fn temp_file(name: &str, content: &str) -> PathBuf {
        let path = std::env::temp_dir().join(format!("tessera-cli-audit-{}-{name}", std::process::id()));
        std::fs::write(&path, content).unwrap();
        path
    }

    #[test]
    fn tail_reads_whole_lines_from_the_end() {
        let content = "one\ntwo\nthree-three\nfour\n";
        let path = temp_file("tail", content);
        for chunk in [1, 2, 5, 64 * 1024] {
            let lines = |n| read_tail(&path, n, chunk).unwrap();
            assert_eq!(
                lines(2),
                vec![b"three-three".to_vec(), b"four".to_vec()],
                "chunk {chunk}"
            );
            assert_eq!(lines(9).len(), 4);
            assert!(lines(0).is_empty());
        }
        std::fs::write(&path, "no-newline").unwrap();
        assert_eq!(read_tail(&path, 3, 4).unwrap(), vec![b"no-newline".to_vec()]);
        std::fs::write(&path, "").unwrap();
        assert!(read_tail(&path, 3, 4).unwrap().is_empty());
        std::fs::remove_file(&path).unwrap();
    }

    #[test]
    fn summaries_escape_what_callers_sent() {
        let event = AuditEvent {
            who: Some(Actor::new("spiffe://td/agent/a")),
            task_id: Some("t-1".into()),
            scopes: vec!["read".into(), "write".into()],
            ttl_secs: Some(300),
            reason: Some("bad\u{1b}[31m \"quote\"".into()),
            ..AuditEvent::new(
                AuditKind::TokenDenied,
                DateTime::from_timestamp(1_800_000_000, 0).unwrap(),
                Outcome::Deny,
                "broker-1",
            )
        };
        let record = Chain::genesis().seal(event);
        assert_eq!(
            summary(&record),
            "     1  2027-01-15T08:00:00Z  token_denied  deny  who=spiffe://td/agent/a  task=t-1  \
             scopes=read,write  ttl=5m  instance=broker-1  reason=\"bad\\u{1b}[31m \\\"quote\\\"\""
        );
    }

    #[test]
    fn problems_have_stable_names() {
        assert_eq!(problem(&ChainError::Malformed { line: 1 }), "malformed");
        assert_eq!(problem(&ChainError::Edited { line: 1, seq: 1 }), "edited");
        assert_eq!(
            problem(&ChainError::Sequence {
                line: 1,
                expected: 1,
                found: 2
            }),
            "sequence"
        );
    }
}
