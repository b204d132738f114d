//! The console's HTML, rendered on the server. Every value from outside
//! (ids, reasons, labels) goes through [`esc`]; no page holds inline script
//! or style (the CSP forbids both), a token, a key or a code.

use std::fmt::Write as _;

use chrono::{DateTime, Utc};
use tessera_core::approval::Approval;
use tessera_core::blast::BlastRadius;
use tessera_core::grant::Grant;
use tessera_core::identity::Identity;
use tessera_core::task::{Task, TaskId};

use crate::broker::PublishedKeys;
use crate::broker::console::{AuditView, ConsoleCaller};

/// Pending approvals, with each requester's registry entry.
pub(super) struct Pending {
    pub(super) approvals: Vec<(Approval, Option<Identity>)>,
    pub(super) now: DateTime<Utc>,
    pub(super) more: bool,
}

/// HTML-escapes `s` for text and double-quoted attributes.
pub(super) fn esc(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// Percent-encodes a path segment (ids may hold `:` and `/`: SPIFFE IDs).
fn seg(s: &str) -> String {
    let mut out = String::new();
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
            out.push(char::from(b));
        } else {
            let _ = write!(out, "%{b:02X}");
        }
    }
    out
}

fn time(t: DateTime<Utc>) -> String {
    t.format("%Y-%m-%d %H:%M:%S UTC").to_string()
}

fn left(until: DateTime<Utc>, now: DateTime<Utc>) -> String {
    let secs = (until - now).num_seconds();
    if secs <= 0 {
        return "expired".to_owned();
    }
    format!("{}m {:02}s", secs / 60, secs % 60)
}

fn document(title: &str, body: &str) -> String {
    format!(
        "<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\
         <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\
         <title>{} · Tessera console</title>\
         <link rel=\"stylesheet\" href=\"/console/assets/console.css\">\
         <script src=\"/console/assets/console.js\" defer></script></head>\
         <body>{body}</body></html>\n",
        esc(title)
    )
}

fn csrf(caller: &ConsoleCaller) -> String {
    format!("<input type=\"hidden\" name=\"csrf\" value=\"{}\">", esc(&caller.csrf))
}

const NAV: [(&str, &str, &str); 5] = [
    ("approvals", "/console/", "Approvals"),
    ("tasks", "/console/tasks", "Live tasks"),
    ("blast", "/console/blast", "Blast radius"),
    ("keys", "/console/keys", "Keys"),
    ("audit", "/console/audit", "Audit"),
];

/// A signed-in page: the header, the navigation, `main`.
fn page(caller: &ConsoleCaller, active: &str, title: &str, main: &str) -> String {
    let mut nav = String::new();
    for (key, href, label) in NAV {
        let current = if key == active { " aria-current=\"page\"" } else { "" };
        let _ = write!(nav, "<a href=\"{href}\"{current}>{label}</a>");
    }
    let body = format!(
        "<header><span class=\"brand\">Tessera</span><nav>{nav}</nav>\
         <form method=\"post\" action=\"/console/signout\" class=\"signout\">{}\
         <span class=\"who\" id=\"who\">{}</span> <span class=\"muted\">session {} until {}</span> \
         <button type=\"submit\">Sign out</button></form></header>\
         <main><h1>{}</h1>{main}</main>",
        csrf(caller),
        esc(caller.who.id().as_str()),
        esc(&caller.session),
        esc(&time(caller.expires_at)),
        esc(title),
    );
    document(title, &body)
}

fn notice(done: &str) -> String {
    // Only fixed words reach the page: the parameter is never echoed.
    let text = match done {
        "approved" => "Approved: the requester receives its one token.".to_owned(),
        "denied" => "Denied: the requester is told, with your reason.".to_owned(),
        "rotated" => "Signing key rotated.".to_owned(),
        other => {
            let mut parts = other.rsplitn(2, '-');
            match (parts.next().and_then(|n| n.parse::<u64>().ok()), parts.next()) {
                (Some(n), Some("grant-revoked")) => format!("Grant revoked ({n} grant(s) ended)."),
                (Some(n), Some("task-revoked")) => format!("Task revoked ({n} grant(s) ended)."),
                (Some(n), Some("identity-revoked")) => format!("Identity revoked ({n} grant(s) ended)."),
                _ => return String::new(),
            }
        }
    };
    format!("<p class=\"notice\" role=\"status\" id=\"notice\">{}</p>", esc(&text))
}

/// A refusal: what happened and that nothing changed.
pub(super) fn refusal(title: &str, message: &str) -> String {
    document(
        title,
        &format!(
            "<main class=\"narrow\"><h1>{}</h1><p class=\"error\" id=\"error\">{}</p>\
             <p><a href=\"/console/\">Back to the console</a></p></main>",
            esc(title),
            esc(message)
        ),
    )
}

/// The sign-in page: a form for the code. `console.js` fills it from the
/// URL's fragment (and takes the code out of the address bar); without
/// script, the person pastes the code. Continuing names the identity first
/// ([`signin_confirm`]); nothing is spent yet.
pub(super) fn signin() -> String {
    document(
        "Sign in",
        "<main class=\"narrow\"><h1>Tessera operator console</h1>\
         <p>Sign in with the one-time code <code>tessera console</code> gave you. \
         It works once, for a short time.</p>\
         <form method=\"post\" action=\"/console/signin\" id=\"signin-form\">\
         <label id=\"code-field\">Sign-in code (the part of the URL after <code>#code=</code>) \
         <input type=\"text\" name=\"code\" id=\"code\" maxlength=\"128\" autocomplete=\"off\" spellcheck=\"false\" required></label> \
         <button type=\"submit\" id=\"continue\">Continue</button></form></main>",
    )
}

/// The second step of sign-in: whom the code signs in as, and a button
/// that spends it. A link someone else sent would sign the person in as
/// its sender, and what they did would be recorded under that name: the
/// identity is shown before anything happens.
pub(super) fn signin_confirm(code: &str, identity: &str) -> String {
    document(
        "Sign in",
        &format!(
            "<main class=\"narrow\"><h1>Sign in as this identity?</h1>\
             <p>This code signs you in as <strong id=\"signin-as\">{who}</strong>.</p>\
             <p class=\"error\">Continue only if that is you. A sign-in link someone else sent you \
             would sign you in as them, and everything you do would be recorded in their name.</p>\
             <form method=\"post\" action=\"/console/signin\">\
             <input type=\"hidden\" name=\"code\" value=\"{}\">\
             <input type=\"hidden\" name=\"confirm\" value=\"yes\">\
             <button type=\"submit\" id=\"signin\">Sign in as {who}</button></form></main>",
            esc(code),
            who = esc(identity),
        ),
    )
}

/// After sign-out.
pub(super) fn signed_out() -> String {
    document(
        "Signed out",
        "<main class=\"narrow\"><h1>Signed out</h1><p id=\"signed-out\">Your console session has ended. \
         Run <code>tessera console</code> to sign in again.</p></main>",
    )
}

/// The approvals page; the list is refreshed in place by `console.js` on
/// each server-sent `approvals` event.
pub(super) fn approvals(caller: &ConsoleCaller, pending: &Pending, done: &str) -> String {
    let main = format!(
        "{}<p class=\"muted\">Updated live <span id=\"live\" data-state=\"connecting\">(connecting…)</span>. \
         A requester can never approve its own request.</p>\
         <section id=\"approvals\" data-events=\"/console/events\" data-list=\"/console/approvals/list\">{}</section>",
        notice(done),
        approval_list(caller, pending)
    );
    page(caller, "approvals", "Pending approvals", &main)
}

/// The list of pending approvals, alone (also served as a fragment).
pub(super) fn approval_list(caller: &ConsoleCaller, pending: &Pending) -> String {
    if pending.approvals.is_empty() {
        return "<p class=\"empty\" id=\"no-approvals\">Nothing waits for approval.</p>".to_owned();
    }
    let mut out = String::new();
    for (a, requester) in &pending.approvals {
        let r = &a.request;
        let (kind, owner) = requester
            .as_ref()
            .map(|i| (i.kind.to_string(), i.owner.clone()))
            .unwrap_or_else(|| ("unregistered".into(), "unknown".into()));
        let scopes: Vec<String> = r
            .scopes
            .iter()
            .map(|s| {
                if a.high_impact.contains(s) {
                    format!("<span class=\"hi\">{}</span>", esc(s.as_str()))
                } else {
                    esc(s.as_str())
                }
            })
            .collect();
        let ttl = r
            .ttl
            .map_or_else(|| "default".to_owned(), |t| format!("{} s", t.as_secs()));
        let binding = if r.pop_jkt.is_empty() {
            "bearer"
        } else if r.pop_jkt.starts_with("x5t#S256:") {
            "bound to the requester's certificate (mTLS)"
        } else {
            "bound to the requester's proof key (DPoP)"
        };
        let own = a.request.requester == *caller.who.id();
        let id = esc(a.id.as_str());
        let decide = if own {
            "<p class=\"error own\">This is your own request: someone else must decide it.</p>".to_owned()
        } else {
            String::new()
        };
        let _ = write!(
            out,
            "<article class=\"approval\" id=\"approval-{id}\" data-approval=\"{id}\">\
             <h2>{} <span class=\"muted\">wants</span> {}</h2>\
             <dl>\
             <dt>Approval</dt><dd><code>{id}</code></dd>\
             <dt>Requester</dt><dd class=\"requester\">{} <span class=\"muted\">({}, owner {})</span></dd>\
             <dt>Task</dt><dd><code>{}</code></dd>\
             <dt>Audience</dt><dd>{}</dd>\
             <dt>Scopes</dt><dd>{}</dd>\
             <dt>Class</dt><dd>{}</dd>\
             <dt>Lifetime</dt><dd>{}</dd>\
             <dt>Binding</dt><dd>{}</dd>\
             <dt>Authorization details</dt><dd class=\"muted\">none (Tessera requests name an audience and scopes)</dd>\
             <dt>Blast radius</dt><dd><strong>{}</strong> <span class=\"muted\">(class {}, {} high-impact scope(s), lifetime {})</span></dd>\
             <dt>Why it waits</dt><dd class=\"why\">{}</dd>\
             <dt>Time left</dt><dd><span class=\"countdown\" data-expires=\"{}\">{}</span> <span class=\"muted\">(until {})</span></dd>\
             </dl>{decide}\
             <form method=\"post\" action=\"/console/approvals/{}\" class=\"decide\">{}\
             <label>Reason <input type=\"text\" name=\"reason\" maxlength=\"512\" required></label>\
             <button type=\"submit\" name=\"decision\" value=\"approve\" class=\"approve\">Approve</button>\
             <button type=\"submit\" name=\"decision\" value=\"deny\" class=\"deny\">Deny</button>\
             </form></article>",
            esc(r.requester.as_str()),
            esc(&r.scopes.iter().map(|s| s.as_str()).collect::<Vec<_>>().join(" ")),
            esc(r.requester.as_str()),
            esc(&kind),
            esc(&owner),
            esc(r.task_id.as_str()),
            esc(r.audience.as_str()),
            scopes.join(" "),
            esc(&a.class.to_string()),
            esc(&ttl),
            esc(binding),
            a.blast_radius,
            esc(&a.class.to_string()),
            a.high_impact.len(),
            esc(&ttl),
            esc(&a.reason),
            a.expires_at.timestamp(),
            esc(&left(a.expires_at, pending.now)),
            esc(&time(a.expires_at)),
            seg(a.id.as_str()),
            csrf(caller),
        );
    }
    if pending.more {
        out.push_str("<p class=\"muted\">More are pending: see <code>tessera approvals ls --all</code>.</p>");
    }
    out
}

fn grant_tree(
    out: &mut String,
    grants: &[&Grant],
    parent: Option<&tessera_core::grant::GrantId>,
    now: DateTime<Utc>,
    depth: usize,
) {
    let children: Vec<&&Grant> = grants
        .iter()
        .filter(|g| match parent {
            None => g.parent.as_ref().is_none_or(|p| !grants.iter().any(|o| &o.id == p)),
            Some(p) => g.parent.as_ref() == Some(p),
        })
        .collect();
    if children.is_empty() || depth > 16 {
        return;
    }
    out.push_str("<ul class=\"tree\">");
    for g in children {
        let id = esc(g.id.as_str());
        let _ = write!(
            out,
            "<li class=\"grant\" data-grant=\"{id}\"><code>{id}</code> → {} · {} <span class=\"muted\">[{}] {} · {} left{}</span> \
             <a class=\"revoke\" href=\"/console/revoke/grant/{}\">Revoke…</a>",
            esc(g.subject.as_str()),
            esc(g.audience.as_str()),
            esc(&g.scopes.iter().map(|s| s.as_str()).collect::<Vec<_>>().join(" ")),
            esc(&g.class.to_string()),
            esc(&left(g.expires_at, now)),
            if g.impact.high_impact { " · high impact" } else { "" },
            seg(g.id.as_str()),
        );
        grant_tree(out, grants, Some(&g.id), now, depth + 1);
        out.push_str("</li>");
    }
    out.push_str("</ul>");
}

/// The live tasks: those with live grants, each with its agents, ceiling,
/// deadline and grants as delegation trees.
pub(super) fn tasks(
    caller: &ConsoleCaller,
    tasks: &[(TaskId, Option<Task>, Vec<Grant>)],
    details_allowed: bool,
    now: DateTime<Utc>,
    done: &str,
) -> String {
    let mut main = notice(done);
    if !details_allowed {
        main.push_str(
            "<p class=\"error\" id=\"tasks-not-allowed\">Not allowed: policy does not let you read these tasks' \
             details (agents, ceiling, deadline); only their grants are shown.</p>",
        );
    }
    if tasks.is_empty() {
        main.push_str("<p class=\"empty\" id=\"no-tasks\">No task holds a live grant.</p>");
    }
    for (id, task, grants) in tasks {
        let ids = esc(id.as_str());
        let _ = write!(
            main,
            "<article class=\"task\" id=\"task-{ids}\" data-task=\"{ids}\"><h2>Task <code>{ids}</code></h2><dl>"
        );
        if let Some(task) = task {
            let agents: Vec<String> = task.agents.iter().map(|a| esc(a.as_str())).collect();
            let ceiling: Vec<String> = task
                .ceiling
                .0
                .iter()
                .map(|(aud, scopes)| {
                    format!(
                        "{}: {}",
                        esc(aud.as_str()),
                        esc(&scopes.iter().map(|s| s.as_str()).collect::<Vec<_>>().join(" "))
                    )
                })
                .collect();
            let _ = write!(
                main,
                "<dt>Orchestrator</dt><dd>{}</dd><dt>Agents</dt><dd>{}</dd><dt>Ceiling</dt><dd>{}</dd>\
                 <dt>Deadline</dt><dd>{} <span class=\"muted\">({} left)</span></dd>{}",
                esc(task.orchestrator.as_str()),
                agents.join("<br>"),
                ceiling.join("<br>"),
                esc(&time(task.deadline)),
                esc(&left(task.deadline, now)),
                task.parent
                    .as_ref()
                    .map(|p| format!("<dt>Parent task</dt><dd><code>{}</code></dd>", esc(p.as_str())))
                    .unwrap_or_default(),
            );
        }
        let _ = write!(main, "<dt>Live grants</dt><dd>{}</dd></dl>", grants.len());
        let refs: Vec<&Grant> = grants.iter().collect();
        grant_tree(&mut main, &refs, None, now, 0);
        let _ = write!(
            main,
            "<p class=\"actions\"><a class=\"revoke-task\" href=\"/console/revoke/task/{}\">Revoke task…</a>",
            seg(id.as_str())
        );
        let subjects: std::collections::BTreeSet<_> = grants.iter().map(|g| &g.subject).collect();
        for s in subjects {
            let _ = write!(
                main,
                " <a class=\"revoke-identity\" href=\"/console/revoke/identity/{}\">Revoke {}…</a>",
                seg(s.as_str()),
                esc(s.as_str())
            );
        }
        main.push_str("</p></article>");
    }
    page(caller, "tasks", "Live tasks", &main)
}

/// The confirmation page of a revocation: what it ends, a reason, confirm.
pub(super) fn confirm_revoke(caller: &ConsoleCaller, kind: &str, id: &str, count: usize) -> String {
    let what = match kind {
        "grant" => format!("grant <code>{}</code> and every grant delegated from it", esc(id)),
        "task" => format!(
            "task <code>{}</code>, its child tasks, and every grant in them",
            esc(id)
        ),
        _ => format!(
            "every live grant of <code>{}</code> and every grant delegated from them",
            esc(id)
        ),
    };
    let disable = if kind == "identity" {
        "<label><input type=\"checkbox\" name=\"disable\" id=\"disable\"> Also disable the identity (it gets no new token until enabled again)</label>"
    } else {
        ""
    };
    let main = format!(
        "<p>This revokes {what}.</p><p class=\"count\" id=\"count\">It ends <strong>{count}</strong> live grant(s) now.</p>\
         <form method=\"post\" action=\"/console/revoke/{}/{}\" class=\"confirm\">{}\
         <label>Reason <input type=\"text\" name=\"reason\" maxlength=\"512\" required></label>{disable}\
         <button type=\"submit\" class=\"deny\" id=\"confirm\">Revoke</button> <a href=\"/console/tasks\">Cancel</a></form>",
        seg(kind),
        seg(id),
        csrf(caller),
    );
    page(caller, "tasks", "Confirm revocation", &main)
}

/// Blast radius by identity, owner or task, riskiest first.
pub(super) fn blast(caller: &ConsoleCaller, by: &str, rows: &[(String, BlastRadius)]) -> String {
    let mut main = String::from("<p class=\"tabs\">By ");
    for (key, label) in [("identity", "identity"), ("owner", "owner"), ("task", "task")] {
        let current = if key == by { " aria-current=\"page\"" } else { "" };
        let _ = write!(main, "<a href=\"/console/blast?by={key}\"{current}>{label}</a> ");
    }
    main.push_str(
        "</p><table id=\"blast\"><thead><tr><th>Target</th><th>Score</th><th>Live grants</th><th>High impact</th>\
         <th>Audiences</th><th>Longest TTL left</th><th>Delegation depth</th><th>Fan-out</th><th>Owners</th></tr></thead><tbody>",
    );
    for (name, r) in rows {
        let _ = write!(
            main,
            "<tr><td>{}</td><td><strong>{}</strong></td><td>{}</td><td>{}</td><td>{}</td><td>{} s</td><td>{}</td><td>{}</td><td>{}</td></tr>",
            esc(name),
            r.total_score,
            r.live_grants,
            r.high_impact_grants,
            r.audiences.len(),
            r.longest_remaining_ttl_secs,
            r.max_delegation_depth,
            r.delegation_fan_out,
            esc(&r.owners.iter().cloned().collect::<Vec<_>>().join(", ")),
        );
    }
    main.push_str("</tbody></table>");
    page(caller, "blast", "Blast radius", &main)
}

/// The published keys (ids and states only, never key material) and rotation.
pub(super) fn keys(caller: &ConsoleCaller, keys: &PublishedKeys, done: &str) -> String {
    let mut main = notice(done);
    main.push_str(
        "<table id=\"keys\"><thead><tr><th>Key id</th><th>State</th><th>Published</th><th>Leaves the JWKS</th></tr></thead><tbody>",
    );
    for k in &keys.status {
        let state = match k.state {
            crate::broker::KeyState::Current => "signing (this replica)",
            crate::broker::KeyState::Next => "published, signs next",
            crate::broker::KeyState::Active => "signing (another replica)",
            crate::broker::KeyState::Retiring => "retiring",
        };
        let _ = write!(
            main,
            "<tr><td><code>{}</code></td><td>{}</td><td>{}</td><td>{}</td></tr>",
            esc(&k.kid),
            state,
            esc(&time(k.published_at)),
            k.remove_at.map(|t| esc(&time(t))).unwrap_or_else(|| "—".to_owned()),
        );
    }
    let _ = write!(
        main,
        "</tbody></table><h2>Rotate the signing key</h2><form method=\"post\" action=\"/console/keys/rotate\" class=\"confirm\">{}\
         <label>Reason <input type=\"text\" name=\"reason\" maxlength=\"512\" required></label>\
         <button type=\"submit\" data-confirm=\"Rotate the signing key now? Tokens already issued stay valid until they expire.\">Rotate</button></form>",
        csrf(caller)
    );
    page(caller, "keys", "Keys", &main)
}

/// The latest audit records and whether the chain verifies.
pub(super) fn audit(caller: &ConsoleCaller, filter: &str, view: &AuditView) -> String {
    let chain = match &view.verified {
        Ok(n) => format!("<p class=\"ok\" id=\"chain\">The audit chain verifies ({n} records).</p>"),
        Err(why) => format!(
            "<p class=\"error\" id=\"chain\">The audit chain does not verify: {}</p>",
            esc(why)
        ),
    };
    let mut main = format!(
        "{chain}<form method=\"get\" action=\"/console/audit\" class=\"filter\">\
         <label>Filter <input type=\"search\" name=\"q\" value=\"{}\" maxlength=\"200\"></label> <button type=\"submit\">Filter</button></form>\
         <table id=\"audit\"><thead><tr><th>#</th><th>When</th><th>Event</th><th>Decision</th><th>Who</th><th>Task</th><th>Reason</th><th>Console session</th></tr></thead><tbody>",
        esc(filter)
    );
    for r in &view.records {
        let e = &r.event;
        let _ = write!(
            main,
            "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
            r.seq,
            esc(&time(e.at)),
            esc(e.event.as_str()),
            esc(e.decision.as_str()),
            esc(e.who.as_ref().map(|w| w.identity.as_str()).unwrap_or_default()),
            esc(e.task_id.as_deref().unwrap_or_default()),
            esc(e.reason.as_deref().unwrap_or_default()),
            esc(e.console_session.as_deref().unwrap_or_default()),
        );
    }
    main.push_str("</tbody></table>");
    page(caller, "audit", "Audit", &main)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_and_attributes_are_escaped_and_segments_encoded() {
        assert_eq!(esc("<a href=\"x\">'&"), "&lt;a href=&quot;x&quot;&gt;&#39;&amp;");
        assert_eq!(seg("spiffe://td/a b"), "spiffe%3A%2F%2Ftd%2Fa%20b");
    }

    #[test]
    fn a_notice_never_echoes_its_parameter() {
        assert_eq!(notice("<script>"), "");
        assert!(notice("task-revoked-3").contains("3 grant(s)"));
        assert_eq!(notice("task-revoked-<b>"), "");
    }
}
