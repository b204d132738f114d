//! The operator console: server-rendered pages under `/console/` on the
//! OAuth facade's HTTPS listener (`[console] enabled = true`).
//!
//! | route | what |
//! |---|---|
//! | `GET /console/signin#code=` , `POST /console/signin` | the sign-in page (the code in the URL's fragment, which no server or proxy sees; a code in the query string is refused and discarded); a POST names the code's identity, a confirmed POST spends it and sets the session cookie |
//! | `POST /console/signout` | ends the session |
//! | `GET /console/` , `/console/approvals/list` , `/console/events` | pending approvals, the list alone, and server-sent events when it changes |
//! | `POST /console/approvals/{id}` | approve or deny (`decision`, `reason`) |
//! | `GET /console/tasks` , `GET`/`POST /console/revoke/{grant,task,identity}/{id}` | live tasks; a revocation's confirmation page and the revocation |
//! | `GET /console/blast` , `/console/keys` , `POST /console/keys/rotate` , `GET /console/audit` | blast radius, keys and rotation, the audit trail |
//! | `GET /console/assets/{console.css,console.js}` | the two static files, compiled in |
//!
//! Every action is the broker use case the gRPC API calls, as the session's
//! identity (so Cedar decides, and audit records are the same), run inside
//! [`broker::console::in_session`] so each record names the session.
//!
//! The page's own security: the session cookie is `__Host-`, `Secure`,
//! `HttpOnly`, `SameSite=Strict`; every POST must come from the console's
//! own origin (`Origin`, and `Sec-Fetch-Site` when sent) and carry the
//! session's CSRF token (compared in constant time), or nothing happens;
//! every answer carries a Content-Security-Policy without inline script,
//! `frame-ancestors 'none'` and `X-Frame-Options: DENY`, `no-store`, and
//! `Referrer-Policy: same-origin` (no referrer, so no sign-in URL, leaves
//! for another site; `no-referrer` would make browsers send `Origin: null`
//! on the console's own POSTs). No page renders a token, a key or a code.

pub mod config;
mod pages;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::extract::rejection::FormRejection;
use axum::extract::{DefaultBodyLimit, Form, Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use tessera_core::ErrorKind;
use tessera_core::approval::ApprovalId;
use tessera_core::blast::BlastTarget;
use tessera_core::grant::Grant;
use tessera_core::task::TaskState;
use tonic::Code;

use crate::broker::console::{ConsoleCaller, in_session, same_secret};
use crate::broker::{Broker, BrokerError, GrantQuery};
use crate::convert;

/// The session cookie. `__Host-`: the browser keeps it only if it is
/// `Secure`, has `Path=/` and no `Domain`.
const COOKIE: &str = "__Host-tessera-console";
/// Largest form accepted.
const MAX_FORM_BYTES: usize = 8 * 1024;
/// Most grants a page lists (the rest: narrow with the CLI).
const MAX_GRANTS: usize = 1000;
/// How often the event stream re-reads pending approvals when nothing on
/// this replica woke it (decisions and requests on other replicas).
const EVENTS_POLL: Duration = Duration::from_millis(500);

/// The console's Content-Security-Policy: scripts and styles from the
/// console only, no inline script, no framing, forms post only here.
const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; \
    connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'";

const CSS: &str = include_str!("assets/console.css");
const JS: &str = include_str!("assets/console.js");

/// Most event streams open at once: each holds one of the listener's
/// connections, which the OAuth facade's clients need too.
const MAX_EVENT_STREAMS: usize = 64;
/// Most event streams one identity may hold open: one operator's tabs (or
/// a script with a stolen cookie) cannot take every stream.
const MAX_EVENT_STREAMS_PER_IDENTITY: usize = 8;

/// The event streams open now, in all and per identity.
#[derive(Debug, Default)]
struct Streams {
    total: usize,
    by_identity: HashMap<tessera_core::identity::SpiffeId, usize>,
}

/// What the console's handlers share.
pub struct Console {
    broker: Arc<Broker>,
    /// The per-identity rate limits of the gRPC port and the facade.
    limiter: Arc<crate::grpc::limits::IdentityLimiter>,
    /// Event streams open now.
    streams: Arc<std::sync::Mutex<Streams>>,
    /// `scheme://host[:port]` every POST's `Origin` must equal.
    origin: String,
    /// The audit file the audit page reads (the broker's own).
    audit_file: std::path::PathBuf,
}

impl std::fmt::Debug for Console {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Console")
            .field("origin", &self.origin)
            .finish_non_exhaustive()
    }
}

impl Console {
    /// The console of `broker`, reached at `public_url` (an origin), its
    /// callers charged to `limiter` like every other call.
    pub fn new(
        broker: Arc<Broker>,
        limiter: Arc<crate::grpc::limits::IdentityLimiter>,
        public_url: &str,
        audit_file: std::path::PathBuf,
    ) -> Self {
        Self {
            broker,
            limiter,
            streams: Arc::new(std::sync::Mutex::new(Streams::default())),
            origin: public_url.trim_end_matches('/').to_owned(),
            audit_file,
        }
    }
}

/// The console's routes, to merge into the facade's router.
pub fn routes(console: Arc<Console>) -> Router {
    Router::new()
        .route("/console", get(|| async { redirect("/console/") }))
        .route("/console/", get(approvals_page))
        .route("/console/signin", get(signin_page).post(signin))
        .route("/console/signout", post(signout))
        .route("/console/approvals/list", get(approvals_list))
        .route("/console/approvals/{id}", post(decide))
        .route("/console/events", get(events))
        .route("/console/tasks", get(tasks_page))
        .route("/console/revoke/{kind}/{id}", get(revoke_confirm).post(revoke))
        .route("/console/blast", get(blast_page))
        .route("/console/keys", get(keys_page))
        .route("/console/keys/rotate", post(rotate))
        .route("/console/audit", get(audit_page))
        .route("/console/assets/console.css", get(|| async { asset("text/css", CSS) }))
        .route(
            "/console/assets/console.js",
            get(|| async { asset("text/javascript", JS) }),
        )
        .layer(DefaultBodyLimit::max(MAX_FORM_BYTES))
        .layer(axum::middleware::map_response(secure_headers))
        .with_state(console)
}

/// The headers every console answer carries.
async fn secure_headers(mut response: Response) -> Response {
    let h = response.headers_mut();
    h.insert(header::CONTENT_SECURITY_POLICY, HeaderValue::from_static(CSP));
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    h.insert(header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    // `same-origin`, not `no-referrer`: under `no-referrer` a browser sends
    // `Origin: null` on our own form POSTs, which the origin check refuses.
    h.insert(header::REFERRER_POLICY, HeaderValue::from_static("same-origin"));
    h.insert("cross-origin-opener-policy", HeaderValue::from_static("same-origin"));
    h.insert("cross-origin-resource-policy", HeaderValue::from_static("same-origin"));
    if !h.contains_key(header::CACHE_CONTROL) {
        h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    }
    response
}

fn asset(content_type: &'static str, body: &'static str) -> Response {
    let mut response = body.into_response();
    let h = response.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("private, max-age=300"));
    response
}

fn html(status: StatusCode, body: String) -> Response {
    let mut response = (status, body).into_response();
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/html; charset=utf-8"),
    );
    response
}

fn redirect(to: &str) -> Response {
    let mut response = StatusCode::SEE_OTHER.into_response();
    if let Ok(value) = HeaderValue::from_str(to) {
        response.headers_mut().insert(header::LOCATION, value);
    }
    response
}

/// A page that says why nothing was done.
#[derive(Debug)]
struct Refusal {
    status: StatusCode,
    title: &'static str,
    message: String,
}

impl Refusal {
    fn new(status: StatusCode, title: &'static str, message: impl Into<String>) -> Self {
        Self {
            status,
            title,
            message: message.into(),
        }
    }

    fn not_signed_in() -> Self {
        Self::new(
            StatusCode::UNAUTHORIZED,
            "Not signed in",
            "Sign in with `tessera --as <operator> console` and open the URL it prints.",
        )
    }

    fn cross_site() -> Self {
        Self::new(
            StatusCode::FORBIDDEN,
            "Request refused",
            "This request did not come from a console page of this broker (origin or CSRF token missing or wrong). Nothing was changed.",
        )
    }

    /// A broker refusal, through the one map of `status.rs` (which logs
    /// internal errors and never puts a secret in the message).
    fn broker(e: BrokerError) -> Self {
        let status = crate::status::from_broker(e);
        let (http, title) = match status.code() {
            Code::Unauthenticated => (StatusCode::UNAUTHORIZED, "Not signed in"),
            Code::PermissionDenied => (StatusCode::FORBIDDEN, "Not allowed"),
            Code::InvalidArgument | Code::OutOfRange => (StatusCode::BAD_REQUEST, "Invalid request"),
            Code::NotFound => (StatusCode::NOT_FOUND, "Not found"),
            Code::FailedPrecondition | Code::AlreadyExists => (StatusCode::CONFLICT, "Cannot be done now"),
            Code::ResourceExhausted => (StatusCode::TOO_MANY_REQUESTS, "Too many requests"),
            Code::Unavailable => (StatusCode::SERVICE_UNAVAILABLE, "Unavailable"),
            _ => (StatusCode::INTERNAL_SERVER_ERROR, "Internal error"),
        };
        Self::new(http, title, status.message())
    }
}

impl IntoResponse for Refusal {
    fn into_response(self) -> Response {
        html(self.status, pages::refusal(self.title, &self.message))
    }
}

type PageResult = Result<Response, Refusal>;

/// The session cookie's value, if the request carries one.
fn session_cookie(headers: &HeaderMap) -> Option<&str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(name, _)| *name == COOKIE)
        .map(|(_, value)| value)
        .filter(|v| !v.is_empty() && v.len() <= 128)
}

impl Console {
    /// The signed-in caller, re-attested for this request.
    async fn caller(&self, headers: &HeaderMap) -> Result<ConsoleCaller, Refusal> {
        let cookie = session_cookie(headers).ok_or_else(Refusal::not_signed_in)?;
        let caller = self.broker.console_caller(cookie).await.map_err(Refusal::broker)?;
        self.limiter
            .check(caller.who.id())
            .map_err(|status| Refusal::new(StatusCode::TOO_MANY_REQUESTS, "Too many requests", status.message()))?;
        Ok(caller)
    }

    /// Refuses a POST that did not come from a page of this console: its
    /// `Origin` must be ours (browsers send it on every POST) and, when
    /// sent, `Sec-Fetch-Site` must say same-origin.
    fn same_origin(&self, headers: &HeaderMap) -> Result<(), Refusal> {
        let origin = headers.get(header::ORIGIN).and_then(|v| v.to_str().ok());
        if origin != Some(self.origin.as_str()) {
            tracing::info!(origin = ?origin, "console: cross-origin or origin-less POST refused");
            return Err(Refusal::cross_site());
        }
        if let Some(site) = headers.get("sec-fetch-site")
            && site.as_bytes() != b"same-origin"
        {
            return Err(Refusal::cross_site());
        }
        Ok(())
    }

    /// A state-changing request: same origin, signed in, and the session's
    /// CSRF token in the form.
    async fn poster(&self, headers: &HeaderMap, form: &HashMap<String, String>) -> Result<ConsoleCaller, Refusal> {
        self.same_origin(headers)?;
        let caller = self.caller(headers).await?;
        let sent = form.get("csrf").map(String::as_str).unwrap_or_default();
        if !same_secret(sent, &caller.csrf) {
            tracing::info!(session = %caller.session, "console: POST without the session's CSRF token refused");
            return Err(Refusal::cross_site());
        }
        Ok(caller)
    }
}

/// The form's fields; each may appear once.
fn form_fields(form: Result<Form<Vec<(String, String)>>, FormRejection>) -> Result<HashMap<String, String>, Refusal> {
    let Form(pairs) =
        form.map_err(|_| Refusal::new(StatusCode::BAD_REQUEST, "Invalid request", "the form could not be read"))?;
    let mut map = HashMap::new();
    for (name, value) in pairs {
        if map.insert(name, value).is_some() {
            return Err(Refusal::new(
                StatusCode::BAD_REQUEST,
                "Invalid request",
                "a form field appears twice",
            ));
        }
    }
    Ok(map)
}

fn field<'a>(form: &'a HashMap<String, String>, name: &str) -> &'a str {
    form.get(name).map(String::as_str).unwrap_or_default()
}

// ---------------------------------------------------------------- sign-in --

#[derive(serde::Deserialize)]
struct CodeQuery {
    #[serde(default)]
    code: String,
}

/// The sign-in page: a form for the code. The code travels in the URL's
/// fragment (`#code=`), which the browser keeps to itself: `console.js`
/// puts it into the form and removes it from the address bar and history;
/// without script, the person pastes it. A GET spends nothing, so a link
/// preview or prefetch cannot use a code up.
///
/// A code in the query string (the old URL form) may sit in a proxy's
/// access log or the browser's history: it is refused, and discarded so
/// that a copy found there is worthless.
async fn signin_page(State(console): State<Arc<Console>>, Query(q): Query<CodeQuery>) -> Response {
    if !q.code.is_empty() {
        if q.code.len() <= 128 && console.broker.console_discard_code(&q.code) {
            tracing::warn!(
                event = "console_code_in_query",
                "console sign-in code sent in a URL query string: discarded"
            );
        }
        return Refusal::new(
            StatusCode::BAD_REQUEST,
            "Sign-in code refused",
            "Sign-in codes are never accepted in the URL's query string (`?code=`), where proxies log them: \
             this one has been discarded. Run `tessera console` again and open the URL it prints (its code follows `#`).",
        )
        .into_response();
    }
    html(StatusCode::OK, pages::signin())
}

/// POST /console/signin: without `confirm`, names the identity the code
/// signs in as and asks the person to confirm (a link someone else sent
/// would sign them in as its sender); with `confirm=yes`, spends the code.
async fn signin(
    State(console): State<Arc<Console>>,
    headers: HeaderMap,
    form: Result<Form<Vec<(String, String)>>, FormRejection>,
) -> PageResult {
    console.same_origin(&headers)?;
    let form = form_fields(form)?;
    let code = field(&form, "code").trim();
    if code.is_empty() || code.len() > 128 {
        return Err(Refusal::broker(
            crate::broker::console::ConsoleError::CodeRefused.into(),
        ));
    }
    if field(&form, "confirm") != "yes" {
        let identity = console.broker.console_code_identity(code).map_err(Refusal::broker)?;
        return Ok(html(StatusCode::OK, pages::signin_confirm(code, identity.as_str())));
    }
    let signed = console.broker.console_sign_in(code).await.map_err(Refusal::broker)?;
    let max_age = (signed.expires_at - console.broker.now()).num_seconds().max(0);
    let cookie = format!(
        "{COOKIE}={}; Path=/; Secure; HttpOnly; SameSite=Strict; Max-Age={max_age}",
        signed.cookie
    );
    let mut response = redirect("/console/");
    if let Ok(value) = HeaderValue::from_str(&cookie) {
        response.headers_mut().insert(header::SET_COOKIE, value);
    }
    Ok(response)
}

async fn signout(
    State(console): State<Arc<Console>>,
    headers: HeaderMap,
    form: Result<Form<Vec<(String, String)>>, FormRejection>,
) -> PageResult {
    let form = form_fields(form)?;
    let caller = console.poster(&headers, &form).await?;
    let cookie = session_cookie(&headers).unwrap_or_default();
    console
        .broker
        .console_sign_out(&caller, cookie)
        .await
        .map_err(Refusal::broker)?;
    let mut response = html(StatusCode::OK, pages::signed_out());
    let clear = format!("{COOKIE}=; Path=/; Secure; HttpOnly; SameSite=Strict; Max-Age=0");
    if let Ok(value) = HeaderValue::from_str(&clear) {
        response.headers_mut().insert(header::SET_COOKIE, value);
    }
    Ok(response)
}

// -------------------------------------------------------------- approvals --

#[derive(serde::Deserialize)]
struct Notice {
    #[serde(default)]
    done: String,
}

async fn pending(console: &Console, caller: &ConsoleCaller) -> Result<pages::Pending, Refusal> {
    let page = in_session(
        caller.session.clone(),
        console.broker.list_approvals(&caller.who, Ok((None, 100))),
    )
    .await
    .map_err(Refusal::broker)?;
    let registry = console.broker.registry();
    Ok(pages::Pending {
        approvals: page
            .approvals
            .into_iter()
            .map(|a| {
                let requester = registry.lookup(&a.request.requester).ok();
                (a, requester)
            })
            .collect(),
        now: console.broker.now(),
        more: page.next.is_some(),
    })
}

async fn approvals_page(
    State(console): State<Arc<Console>>,
    headers: HeaderMap,
    Query(n): Query<Notice>,
) -> PageResult {
    let caller = console.caller(&headers).await?;
    let pending = pending(&console, &caller).await?;
    Ok(html(StatusCode::OK, pages::approvals(&caller, &pending, &n.done)))
}

async fn approvals_list(State(console): State<Arc<Console>>, headers: HeaderMap) -> PageResult {
    let caller = console.caller(&headers).await?;
    let pending = pending(&console, &caller).await?;
    Ok(html(StatusCode::OK, pages::approval_list(&caller, &pending)))
}

async fn decide(
    State(console): State<Arc<Console>>,
    Path(id): Path<String>,
    headers: HeaderMap,
    form: Result<Form<Vec<(String, String)>>, FormRejection>,
) -> PageResult {
    let form = form_fields(form)?;
    let caller = console.poster(&headers, &form).await?;
    let approve = match field(&form, "decision") {
        "approve" => true,
        "deny" => false,
        _ => {
            return Err(Refusal::new(
                StatusCode::BAD_REQUEST,
                "Invalid request",
                "decision: approve or deny",
            ));
        }
    };
    let id = convert::approval_id("approval_id", &id);
    let reason =
        convert::reason("reason", field(&form, "reason"), if approve { "approved" } else { "" }).and_then(|r| {
            if r.trim().is_empty() {
                Err(crate::status::FieldError::new("reason", "a denial needs a reason"))
            } else {
                Ok(r)
            }
        });
    let asked = id.and_then(|id: ApprovalId| reason.map(|r| (id, r)));
    in_session(
        caller.session.clone(),
        console.broker.decide_approval(&caller.who, asked, approve),
    )
    .await
    .map_err(Refusal::broker)?;
    Ok(redirect(if approve {
        "/console/?done=approved"
    } else {
        "/console/?done=denied"
    }))
}

/// Server-sent events: `approvals` once the stream is open and whenever the
/// set of pending approvals (or their states) changes, `ended` when the
/// session does; a comment
/// every 15 s keeps proxies from closing an idle stream.
async fn events(State(console): State<Arc<Console>>, headers: HeaderMap) -> PageResult {
    let caller = console.caller(&headers).await?;
    let cookie = session_cookie(&headers).unwrap_or_default().to_owned();
    let slot = StreamSlot::take(&console.streams, caller.who.id()).ok_or_else(|| {
        Refusal::new(
            StatusCode::TOO_MANY_REQUESTS,
            "Too many requests",
            "too many console pages are following approvals; close some",
        )
    })?;
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<String, std::convert::Infallible>>(4);
    tokio::spawn(async move {
        let _slot = slot;
        let mut last: Option<Vec<String>> = None;
        let mut quiet = tokio::time::Instant::now();
        loop {
            // Re-checked every round: a session ended, expired, disabled or
            // quarantined stops the stream.
            let caller = match console.broker.console_caller(&cookie).await {
                Ok(caller) => caller,
                Err(_) => {
                    let _ = tx.send(Ok("event: ended\ndata: ended\n\n".to_owned())).await;
                    return;
                }
            };
            let seen = in_session(
                caller.session.clone(),
                console.broker.list_approvals(&caller.who, Ok((None, 100))),
            )
            .await
            .map(|page| {
                page.approvals
                    .iter()
                    .map(|a| format!("{}:{}", a.id, a.state))
                    .collect::<Vec<_>>()
            });
            match seen {
                Ok(seen) => {
                    // The first round always tells: the page was rendered
                    // before this stream began, and anything that arrived in
                    // between must not be missed.
                    if last.as_ref() != Some(&seen) {
                        if tx
                            .send(Ok("event: approvals\ndata: changed\n\n".to_owned()))
                            .await
                            .is_err()
                        {
                            return;
                        }
                        quiet = tokio::time::Instant::now();
                    }
                    last = Some(seen);
                }
                // Policy no longer lets this caller list approvals: asking
                // again every round would pile up counted denials until the
                // operator is quarantined. Say so once and stop.
                Err(e) if matches!(e.kind(), ErrorKind::PermissionDenied | ErrorKind::Unauthenticated) => {
                    let _ = tx.send(Ok("event: ended\ndata: not-allowed\n\n".to_owned())).await;
                    return;
                }
                // A store hiccup: the next round tries again.
                Err(_) => {}
            }
            if quiet.elapsed() > Duration::from_secs(15) {
                if tx.send(Ok(": keep-alive\n\n".to_owned())).await.is_err() {
                    return;
                }
                quiet = tokio::time::Instant::now();
            }
            tokio::select! {
                () = tx.closed() => return,
                () = tokio::time::sleep(EVENTS_POLL) => {}
            }
        }
    });
    drop(caller);
    let body = Body::from_stream(tokio_stream::wrappers::ReceiverStream::new(rx));
    let mut response = (StatusCode::OK, body).into_response();
    let h = response.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static("text/event-stream"));
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    h.insert("x-accel-buffering", HeaderValue::from_static("no"));
    Ok(response)
}

/// One of [`MAX_EVENT_STREAMS`] (and of its identity's
/// [`MAX_EVENT_STREAMS_PER_IDENTITY`]), given back when dropped.
struct StreamSlot {
    open: Arc<std::sync::Mutex<Streams>>,
    identity: tessera_core::identity::SpiffeId,
}

fn streams(open: &std::sync::Mutex<Streams>) -> std::sync::MutexGuard<'_, Streams> {
    open.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl StreamSlot {
    fn take(open: &Arc<std::sync::Mutex<Streams>>, identity: &tessera_core::identity::SpiffeId) -> Option<Self> {
        let mut s = streams(open);
        let mine = s.by_identity.get(identity).copied().unwrap_or(0);
        if s.total >= MAX_EVENT_STREAMS || mine >= MAX_EVENT_STREAMS_PER_IDENTITY {
            return None;
        }
        s.total += 1;
        s.by_identity.insert(identity.clone(), mine + 1);
        Some(Self {
            open: open.clone(),
            identity: identity.clone(),
        })
    }
}

impl Drop for StreamSlot {
    fn drop(&mut self) {
        let mut s = streams(&self.open);
        s.total = s.total.saturating_sub(1);
        if let Some(n) = s.by_identity.get_mut(&self.identity) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                s.by_identity.remove(&self.identity);
            }
        }
    }
}

// ------------------------------------------------------------------ tasks --

async fn live_grants(console: &Console, caller: &ConsoleCaller, query: GrantQuery) -> Result<Vec<Grant>, Refusal> {
    let page = in_session(
        caller.session.clone(),
        console.broker.list_grants(
            &caller.who,
            Ok(GrantQuery {
                page_size: MAX_GRANTS,
                ..query
            }),
        ),
    )
    .await
    .map_err(Refusal::broker)?;
    Ok(page.grants)
}

async fn tasks_page(State(console): State<Arc<Console>>, headers: HeaderMap, Query(n): Query<Notice>) -> PageResult {
    let caller = console.caller(&headers).await?;
    let grants = live_grants(&console, &caller, GrantQuery::default()).await?;
    let mut by_task: std::collections::BTreeMap<_, Vec<Grant>> = std::collections::BTreeMap::new();
    for g in grants {
        by_task.entry(g.task_id.clone()).or_default().push(g);
    }
    let mut tasks = Vec::new();
    // Asked once: when policy refuses the first task's details, the page
    // says so instead of asking again per task (each refusal counts
    // towards the caller's quarantine).
    let mut allowed = true;
    for (id, grants) in by_task {
        let task = if allowed {
            match in_session(caller.session.clone(), console.broker.get_task(&caller.who, &id)).await {
                Ok((task, _)) => Some(task),
                Err(e) if matches!(e.kind(), ErrorKind::PermissionDenied | ErrorKind::Unauthenticated) => {
                    allowed = false;
                    None
                }
                // Ended or gone since its grants were listed.
                Err(_) => None,
            }
        } else {
            None
        };
        tasks.push((id, task, grants));
    }
    Ok(html(
        StatusCode::OK,
        pages::tasks(&caller, &tasks, allowed, console.broker.now(), &n.done),
    ))
}

/// What a revocation from the console names.
enum Target {
    Grant(tessera_core::grant::GrantId),
    Task(tessera_core::task::TaskId),
    Identity(tessera_core::identity::SpiffeId),
}

fn target(kind: &str, id: &str) -> Result<Target, Refusal> {
    let bad = |e: crate::status::FieldError| Refusal::new(StatusCode::BAD_REQUEST, "Invalid request", e.to_string());
    match kind {
        "grant" => convert::grant_id("grant_id", id).map(Target::Grant).map_err(bad),
        "task" => convert::task_id("task_id", id).map(Target::Task).map_err(bad),
        "identity" => convert::identity("identity", id).map(Target::Identity).map_err(bad),
        _ => Err(Refusal::new(
            StatusCode::NOT_FOUND,
            "Not found",
            "nothing to revoke there",
        )),
    }
}

/// How many live grants revoking `target` ends (a grant: with what was
/// delegated from it).
async fn ending(console: &Console, caller: &ConsoleCaller, target: &Target) -> Result<usize, Refusal> {
    Ok(match target {
        Target::Grant(id) => {
            let grants = live_grants(console, caller, GrantQuery::default()).await?;
            let mut ended = std::collections::BTreeSet::from([id.clone()]);
            // Parents come before children in no particular order: repeat until stable.
            loop {
                let before = ended.len();
                for g in &grants {
                    if g.parent.as_ref().is_some_and(|p| ended.contains(p)) {
                        ended.insert(g.id.clone());
                    }
                }
                if ended.len() == before {
                    break;
                }
            }
            ended.iter().filter(|id| grants.iter().any(|g| &g.id == *id)).count()
        }
        Target::Task(id) => {
            let mut query = GrantQuery::default();
            query.filter.task_id = Some(id.clone());
            live_grants(console, caller, query).await?.len()
        }
        Target::Identity(id) => {
            let mut query = GrantQuery::default();
            query.filter.subjects = Some(std::collections::BTreeSet::from([id.clone()]));
            live_grants(console, caller, query).await?.len()
        }
    })
}

async fn revoke_confirm(
    State(console): State<Arc<Console>>,
    Path((kind, id)): Path<(String, String)>,
    headers: HeaderMap,
) -> PageResult {
    let caller = console.caller(&headers).await?;
    let target = target(&kind, &id)?;
    let count = ending(&console, &caller, &target).await?;
    Ok(html(StatusCode::OK, pages::confirm_revoke(&caller, &kind, &id, count)))
}

async fn revoke(
    State(console): State<Arc<Console>>,
    Path((kind, id)): Path<(String, String)>,
    headers: HeaderMap,
    form: Result<Form<Vec<(String, String)>>, FormRejection>,
) -> PageResult {
    let form = form_fields(form)?;
    let caller = console.poster(&headers, &form).await?;
    let target = target(&kind, &id)?;
    let reason = convert::reason("reason", field(&form, "reason"), "").and_then(|r| {
        if r.trim().is_empty() {
            Err(crate::status::FieldError::new("reason", "a revocation needs a reason"))
        } else {
            Ok(r)
        }
    });
    let session = caller.session.clone();
    let broker = &console.broker;
    let who = &caller.who;
    let done = match target {
        Target::Grant(id) => {
            let reason = reason.map_err(|e| Refusal::broker(e.into()))?;
            let out = in_session(session, broker.revoke_grant(who, &id, &reason))
                .await
                .map_err(Refusal::broker)?;
            format!("grant-revoked-{}", 1 + out.descendants_revoked)
        }
        Target::Task(id) => {
            let reason = reason.map_err(|e| Refusal::broker(e.into()))?;
            let out = in_session(session, broker.end_task(who, &id, TaskState::Revoked, &reason))
                .await
                .map_err(Refusal::broker)?;
            format!("task-revoked-{}", out.grants_revoked)
        }
        Target::Identity(id) => {
            let disable = field(&form, "disable") == "on";
            let out = in_session(session, broker.revoke_identity(who, reason.map(|r| (id, r)), disable))
                .await
                .map_err(Refusal::broker)?;
            format!("identity-revoked-{}", out.grants_revoked)
        }
    };
    Ok(redirect(&format!("/console/tasks?done={done}")))
}

// ------------------------------------------------------ blast, keys, audit --

#[derive(serde::Deserialize)]
struct BlastQuery {
    #[serde(default)]
    by: String,
}

async fn blast_page(
    State(console): State<Arc<Console>>,
    headers: HeaderMap,
    Query(q): Query<BlastQuery>,
) -> PageResult {
    let caller = console.caller(&headers).await?;
    let by = match q.by.as_str() {
        "owner" | "task" => q.by.as_str(),
        _ => "identity",
    };
    let targets: Vec<(String, BlastTarget)> = match by {
        "identity" => console
            .broker
            .registry()
            .identities()
            .into_iter()
            .map(|i| (i.id.to_string(), BlastTarget::Identity(i.id)))
            .collect(),
        "owner" => console
            .broker
            .registry()
            .identities()
            .into_iter()
            .map(|i| i.owner)
            .collect::<std::collections::BTreeSet<_>>()
            .into_iter()
            .map(|o| (o.clone(), BlastTarget::Owner(o)))
            .collect(),
        _ => live_grants(&console, &caller, GrantQuery::default())
            .await?
            .into_iter()
            .map(|g| g.task_id)
            .collect::<std::collections::BTreeSet<_>>()
            .into_iter()
            .map(|t| (t.to_string(), BlastTarget::Task(t)))
            .collect(),
    };
    let mut rows = Vec::new();
    for (name, target) in targets {
        let radius = in_session(
            caller.session.clone(),
            console.broker.blast_radius(&caller.who, Ok(target)),
        )
        .await
        .map_err(Refusal::broker)?;
        rows.push((name, radius));
    }
    rows.sort_by(|a, b| b.1.total_score.cmp(&a.1.total_score).then_with(|| a.0.cmp(&b.0)));
    Ok(html(StatusCode::OK, pages::blast(&caller, by, &rows)))
}

async fn keys_page(State(console): State<Arc<Console>>, headers: HeaderMap, Query(n): Query<Notice>) -> PageResult {
    let caller = console.caller(&headers).await?;
    let keys = console.broker.published_keys().await.map_err(Refusal::broker)?;
    Ok(html(StatusCode::OK, pages::keys(&caller, &keys, &n.done)))
}

async fn rotate(
    State(console): State<Arc<Console>>,
    headers: HeaderMap,
    form: Result<Form<Vec<(String, String)>>, FormRejection>,
) -> PageResult {
    let form = form_fields(form)?;
    let caller = console.poster(&headers, &form).await?;
    let why = convert::reason("reason", field(&form, "reason"), "rotated from the operator console");
    in_session(caller.session.clone(), console.broker.rotate_key(&caller.who, why))
        .await
        .map_err(Refusal::broker)?;
    Ok(redirect("/console/keys?done=rotated"))
}

#[derive(serde::Deserialize)]
struct AuditQuery {
    #[serde(default)]
    q: String,
}

async fn audit_page(
    State(console): State<Arc<Console>>,
    headers: HeaderMap,
    Query(q): Query<AuditQuery>,
) -> PageResult {
    let caller = console.caller(&headers).await?;
    let filter: String = q.q.chars().take(200).collect();
    let view = in_session(
        caller.session.clone(),
        console.broker.console_audit(&caller.who, &console.audit_file, &filter),
    )
    .await
    .map_err(Refusal::broker)?;
    Ok(html(StatusCode::OK, pages::audit(&caller, &filter, &view)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_session_cookie_is_found_among_others_and_bounded() {
        let mut headers = HeaderMap::new();
        headers.insert(
            header::COOKIE,
            HeaderValue::from_static("a=1; __Host-tessera-console=abc; b=2"),
        );
        assert_eq!(session_cookie(&headers), Some("abc"));
        headers.insert(header::COOKIE, HeaderValue::from_static("tessera-console=abc"));
        assert_eq!(session_cookie(&headers), None);
        let long = format!("{COOKIE}={}", "x".repeat(200));
        headers.insert(header::COOKIE, HeaderValue::from_str(&long).unwrap());
        assert_eq!(session_cookie(&headers), None);
    }

    fn spiffe(n: usize) -> tessera_core::identity::SpiffeId {
        tessera_core::identity::SpiffeId::parse(&format!("spiffe://td/operator/{n}")).unwrap()
    }

    #[test]
    fn event_streams_are_bounded_and_their_slots_given_back() {
        let open = Arc::new(std::sync::Mutex::new(Streams::default()));
        let slots: Vec<StreamSlot> = (0..MAX_EVENT_STREAMS)
            .filter_map(|n| StreamSlot::take(&open, &spiffe(n)))
            .collect();
        assert_eq!(slots.len(), MAX_EVENT_STREAMS);
        assert!(StreamSlot::take(&open, &spiffe(MAX_EVENT_STREAMS)).is_none());
        drop(slots);
        assert!(StreamSlot::take(&open, &spiffe(0)).is_some());
        assert_eq!(streams(&open).total, 0, "given back on drop");
        assert!(streams(&open).by_identity.is_empty());
    }

    #[test]
    fn one_identity_cannot_take_every_event_stream() {
        let open = Arc::new(std::sync::Mutex::new(Streams::default()));
        let mine: Vec<StreamSlot> = (0..MAX_EVENT_STREAMS)
            .filter_map(|_| StreamSlot::take(&open, &spiffe(1)))
            .collect();
        assert_eq!(mine.len(), MAX_EVENT_STREAMS_PER_IDENTITY);
        assert!(StreamSlot::take(&open, &spiffe(2)).is_some(), "others still get one");
        drop(mine);
        assert!(StreamSlot::take(&open, &spiffe(1)).is_some());
    }

    #[test]
    fn the_policy_allows_no_inline_script_and_no_framing() {
        assert!(CSP.contains("script-src 'self';"));
        assert!(!CSP.contains("unsafe-inline"));
        assert!(CSP.contains("frame-ancestors 'none'"));
        assert!(!JS.is_empty() && !CSS.is_empty());
    }
}
