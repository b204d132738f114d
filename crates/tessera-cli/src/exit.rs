//! Exit codes and the one place errors are printed.
//!
//! 0 success, 1 local error, 2 the broker answered with a gRPC status, 3 no
//! token yet: the request waits for a person's approval. Scripts rely on
//! these: a refusal (2) is an answer, a local error (1) is not, and a pending
//! approval (3) is neither a token nor a refusal, so `TOKEN=$(tessera token
//! request …)` never carries on with an empty token as if it had one.

use std::io::{ErrorKind, Write as _};
use std::process::ExitCode;

use serde::Serialize;
use tonic::{Code, Status};

use crate::output::OutputFormat;

/// The command succeeded.
const OK: u8 = 0;
/// Bad flags or files, cannot connect, a token that does not verify.
const LOCAL: u8 = 1;
/// The broker refused (any gRPC status error).
const REFUSED: u8 = 2;
/// No token yet: the request waits for a person's approval (`token request`
/// without `--wait`); stdout holds no token.
const PENDING: u8 = 3;

/// A token request the broker answered with a pending approval instead of a
/// token. Returned as an error so the run exits [`PENDING`]; what is pending
/// was already printed.
#[derive(Debug)]
pub(crate) struct PendingApproval {
    /// The approval's id (`ap_…`), for `tessera token await`.
    pub(crate) approval_id: String,
}

impl std::fmt::Display for PendingApproval {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "no token yet (exit 3): once approved, collect it with `tessera token await {}`",
            self.approval_id
        )
    }
}

impl std::error::Error for PendingApproval {}

/// How a run ended, as a script sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Outcome {
    Ok,
    Local,
    Refused,
    Pending,
}

impl Outcome {
    fn code(self) -> u8 {
        match self {
            Self::Ok => OK,
            Self::Local => LOCAL,
            Self::Refused => REFUSED,
            Self::Pending => PENDING,
        }
    }
}

/// Prints a clap error (or help/version) and picks the exit code: help and
/// version are a success, every usage error is a local error (1, not clap's 2,
/// which means "refused" here).
pub(crate) fn usage(err: &clap::Error) -> ExitCode {
    // Printing help or an error to a closed pipe is not worth a second error.
    let _ = err.print();
    ExitCode::from(if err.use_stderr() { LOCAL } else { OK })
}

/// Prints the error of a failed run and returns its exit code.
pub(crate) fn report(result: anyhow::Result<()>, format: OutputFormat) -> ExitCode {
    let err = match result {
        Ok(()) => return ExitCode::from(OK),
        Err(err) => err,
    };
    let outcome = classify(&err);
    match (outcome, broker_status(&err)) {
        (Outcome::Ok, _) => {}
        // JSON output already holds the pending approval; text gets the next step.
        (Outcome::Pending, _) if format == OutputFormat::Json => {}
        (Outcome::Pending, _) => eprintln!("{err}"),
        (_, Some(status)) => {
            let code = code_name(status.code());
            eprintln!("error: {code}: {}", status.message());
            if format == OutputFormat::Json {
                let body = ErrorBody {
                    error: ErrorDetail {
                        code,
                        message: status.message(),
                    },
                };
                if let Ok(line) = serde_json::to_string(&body) {
                    let _ = writeln!(std::io::stdout().lock(), "{line}");
                }
            }
        }
        (_, None) => {
            eprintln!("error: {}", causes(&err));
            if let Some(hint) = hint(&err) {
                eprintln!("hint: {hint}");
            }
        }
    }
    ExitCode::from(outcome.code())
}

/// The error and its causes, `: `-separated, each said once: transport
/// errors (tonic, hyper, rustls) often print their source inside their own
/// message and again as the next cause.
fn causes(err: &anyhow::Error) -> String {
    let mut out = String::new();
    let mut previous = String::new();
    for cause in err.chain() {
        let text = cause.to_string();
        if text.is_empty() || previous.ends_with(&text) {
            continue;
        }
        if !out.is_empty() {
            out.push_str(": ");
        }
        out.push_str(&text);
        previous = text;
    }
    out
}

/// What to try next for a connection that failed in a way people often
/// cause by pointing the CLI at the wrong port or at a stopped broker.
fn hint(err: &anyhow::Error) -> Option<&'static str> {
    let chain: Vec<String> = err.chain().map(|c| c.to_string().to_ascii_lowercase()).collect();
    let says = |needle: &str| chain.iter().any(|c| c.contains(&needle.to_ascii_lowercase()));
    if says("InvalidContentType") {
        Some(
            "is this the gRPC port? The server answered without TLS, like the broker's plain-HTTP \
             port (server.http_listen, default 7444); --endpoint or TESSERA_ENDPOINT must name \
             server.listen (default https://127.0.0.1:7443)",
        )
    } else if says("NoApplicationProtocol") {
        Some(
            "is this the gRPC port? The server speaks TLS but not gRPC (HTTP/2), like the OAuth \
             facade (oauth.listen, default 7445); --endpoint or TESSERA_ENDPOINT must name \
             server.listen (default https://127.0.0.1:7443)",
        )
    } else if says("Connection refused") {
        Some(
            "nothing listens there: is the broker running (`make run`)? Its address comes from \
             --endpoint or TESSERA_ENDPOINT (default https://127.0.0.1:7443)",
        )
    } else if says("UnknownIssuer") || says("invalid peer certificate") {
        Some("the broker's certificate is not signed by the trust bundle (--ca, or ca.pem of --dev-dir)")
    } else {
        None
    }
}

fn classify(err: &anyhow::Error) -> Outcome {
    if broker_status(err).is_some() {
        Outcome::Refused
    } else if err.chain().any(|cause| cause.is::<PendingApproval>()) {
        Outcome::Pending
    } else if is_broken_pipe(err) {
        // `tessera revocations watch | head`: the reader left; not a failure.
        Outcome::Ok
    } else {
        Outcome::Local
    }
}

/// The gRPC status anywhere in the error's chain.
fn broker_status(err: &anyhow::Error) -> Option<&Status> {
    err.chain().find_map(|cause| cause.downcast_ref::<Status>())
}

fn is_broken_pipe(err: &anyhow::Error) -> bool {
    err.chain().any(|cause| {
        cause
            .downcast_ref::<std::io::Error>()
            .is_some_and(|io| io.kind() == ErrorKind::BrokenPipe)
    })
}

#[derive(Serialize)]
struct ErrorBody<'a> {
    error: ErrorDetail<'a>,
}

#[derive(Serialize)]
struct ErrorDetail<'a> {
    code: &'static str,
    message: &'a str,
}

/// The canonical gRPC name of a status code, as in the gRPC spec.
pub(crate) fn code_name(code: Code) -> &'static str {
    match code {
        Code::Ok => "OK",
        Code::Cancelled => "CANCELLED",
        Code::Unknown => "UNKNOWN",
        Code::InvalidArgument => "INVALID_ARGUMENT",
        Code::DeadlineExceeded => "DEADLINE_EXCEEDED",
        Code::NotFound => "NOT_FOUND",
        Code::AlreadyExists => "ALREADY_EXISTS",
        Code::PermissionDenied => "PERMISSION_DENIED",
        Code::ResourceExhausted => "RESOURCE_EXHAUSTED",
        Code::FailedPrecondition => "FAILED_PRECONDITION",
        Code::Aborted => "ABORTED",
        Code::OutOfRange => "OUT_OF_RANGE",
        Code::Unimplemented => "UNIMPLEMENTED",
        Code::Internal => "INTERNAL",
        Code::Unavailable => "UNAVAILABLE",
        Code::DataLoss => "DATA_LOSS",
        Code::Unauthenticated => "UNAUTHENTICATED",
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, reason = "test")]

    use anyhow::Context as _;
    use clap::Parser as _;

    use super::*;

    #[track_caller]
    fn check(err: anyhow::Error, expected: Outcome) {
        assert_eq!(classify(&err), expected, "{err:#}");
    }

    #[test]
    fn broker_status_is_refused() {
        check(anyhow::Error::new(Status::permission_denied("no")), Outcome::Refused);
        // Still refused under added context.
        let wrapped = Err::<(), _>(Status::not_found("task `t`"))
            .context("cannot show task")
            .unwrap_err();
        check(wrapped, Outcome::Refused);
    }

    #[test]
    fn local_errors_exit_1() {
        check(anyhow::anyhow!("cannot read `x`"), Outcome::Local);
        check(
            anyhow::Error::new(std::io::Error::from(ErrorKind::NotFound)),
            Outcome::Local,
        );
    }

    #[test]
    fn broken_pipe_is_success() {
        check(
            anyhow::Error::new(std::io::Error::from(ErrorKind::BrokenPipe)),
            Outcome::Ok,
        );
    }

    #[test]
    fn exit_codes_are_stable() {
        assert_eq!(Outcome::Ok.code(), 0);
        assert_eq!(Outcome::Local.code(), 1);
        assert_eq!(Outcome::Refused.code(), 2);
        assert_eq!(Outcome::Pending.code(), 3);
    }

    #[test]
    fn a_pending_approval_exits_3() {
        check(
            anyhow::Error::new(PendingApproval {
                approval_id: "ap_1".into(),
            }),
            Outcome::Pending,
        );
    }

    #[test]
    fn usage_errors_exit_1_not_2() {
        let err = crate::cli::Cli::try_parse_from(["tessera", "--no-such-flag"])
            .map(|_| ())
            .unwrap_err();
        assert!(err.use_stderr());
        let help = crate::cli::Cli::try_parse_from(["tessera", "--help"])
            .map(|_| ())
            .unwrap_err();
        assert!(!help.use_stderr());
    }

    /// An error whose message repeats its source's, as tonic's and rustls' do.
    #[derive(Debug)]
    struct Repeats(std::io::Error);

    impl std::fmt::Display for Repeats {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            write!(f, "transport error: {}", self.0)
        }
    }

    impl std::error::Error for Repeats {
        fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
            Some(&self.0)
        }
    }

    #[test]
    fn each_cause_is_said_once_with_a_hint() {
        let io = std::io::Error::other("received corrupt message of type InvalidContentType");
        let err = anyhow::Error::new(Repeats(io)).context("cannot connect to `https://127.0.0.1:7444`");
        assert_eq!(
            causes(&err),
            "cannot connect to `https://127.0.0.1:7444`: transport error: received corrupt message of type \
             InvalidContentType"
        );
        assert!(hint(&err).unwrap().starts_with("is this the gRPC port?"));

        let refused = anyhow::Error::new(std::io::Error::from(ErrorKind::ConnectionRefused)).context("cannot connect");
        assert!(hint(&refused).unwrap().contains("is the broker running"));
        assert_eq!(hint(&anyhow::anyhow!("cannot read `x`")), None);
    }

    #[test]
    fn code_names_are_grpc_names() {
        assert_eq!(code_name(Code::PermissionDenied), "PERMISSION_DENIED");
        assert_eq!(code_name(Code::FailedPrecondition), "FAILED_PRECONDITION");
        assert_eq!(code_name(Code::Unauthenticated), "UNAUTHENTICATED");
    }
}
