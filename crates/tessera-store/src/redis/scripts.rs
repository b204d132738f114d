//! Server-side scripts. Each runs on one slot: every key it touches is built
//! from `ARGV[1]`, the task tree's base `P:{root}:`, and `KEYS[1]` (a key of
//! that tree) routes it. Times are milliseconds since the epoch, passed in by
//! the broker (its injectable clock decides, not Redis's).

use redis::Script;

/// Lua shared by the scripts that read grants: `load(base, gid)` returns a
/// grant's record, its revocation mark (or false), task, subject, expiry
/// (ms) and whether the record is a field of the tree's grant hash. A live
/// grant's record is a field of `base .. 'G'` (layout 2, see
/// `record.rs`); revoking one moves its record into its mark (field `g`),
/// which expires with the grant. A layout-1 grant (written by a broker
/// before this layout) is a key `grant:<id>` of its own, expiring by itself:
/// still read, so an upgraded broker revokes the grants its predecessor
/// minted. Returns nil for an unknown grant.
const LOAD: &str = r#"
local function load(base, gid)
  local mark = redis.call('GET', base .. 'revoked:' .. gid)
  local rec = redis.call('HGET', base .. 'G', gid)
  local in_hash = rec and true or false
  if not rec and mark then
    local ok, m = pcall(cjson.decode, mark)
    if ok and type(m) == 'table' and type(m['g']) == 'string' then rec = m['g'] end
  end
  if rec then
    local e, t, s = string.match(rec, '^(%d+)\t([^\t]*)\t([^\t]*)\t')
    if not e then return rec, mark, '', '', 0, in_hash end
    return rec, mark, t, s, tonumber(e), in_hash
  end
  local key = base .. 'grant:' .. gid
  rec = redis.call('GET', key)
  if not rec then return nil end
  local ok, j = pcall(cjson.decode, rec)
  if not ok or type(j) ~= 'table' then return rec, mark, '', '', 0, false end
  return rec, mark, j['t'] or '', j['s'] or '', redis.call('PEXPIRETIME', key), false
end
-- The revocation mark of a grant whose record is `rec` (kept when it was
-- in the hash, which the caller then empties of it).
local function mark_of(now, reason, rec, in_hash)
  if in_hash then return cjson.encode({at = now, reason = reason, g = rec}) end
  return cjson.encode({at = now, reason = reason})
end
"#;

/// `body` (a script starting with its `#!lua` line, if any) with [`LOAD`]
/// after that line.
fn with_load(body: &str) -> String {
    match body.split_once('\n') {
        Some((first, rest)) if first.starts_with("#!") => format!("{first}\n{LOAD}{rest}"),
        _ => format!("{LOAD}{body}"),
    }
}

/// Creates a task. KEYS[1] = task hash.
/// ARGV: base, task_id, json, deadline_ms, pexpireat_ms, parent_id|"", now_ms.
/// Returns "ok", "exists", "parent_missing" or "parent_over:<state>".
pub(crate) fn create_task() -> Script {
    Script::new(
        r#"#!lua
-- Declared (no flags): Redis refuses the whole script at a full noeviction
-- maxmemory. Without the shebang the OOM check comes only at the first
-- write, and a first write that may not enlarge memory (ZREMRANGEBYSCORE)
-- exempts every later one: a full Redis took mints without bound.
local base, id, json, deadline, expire_at, parent, now = ARGV[1], ARGV[2], ARGV[3], ARGV[4], ARGV[5], ARGV[6], tonumber(ARGV[7])
if redis.call('EXISTS', KEYS[1]) == 1 then return 'exists' end
if parent ~= '' then
  local pkey = base .. 'task:' .. parent
  local p = redis.call('HMGET', pkey, 'state', 'deadline')
  if not p[1] then return 'parent_missing' end
  if p[1] ~= 'active' then return 'parent_over:' .. p[1] end
  if now >= tonumber(p[2]) then return 'parent_over:expired' end
  local ckey = base .. 'children:' .. parent
  redis.call('SADD', ckey, id)
  local pttl = redis.call('PEXPIRETIME', pkey)
  if pttl > 0 then redis.call('PEXPIREAT', ckey, pttl) end
end
redis.call('HSET', KEYS[1], 'json', json, 'state', 'active', 'deadline', deadline)
redis.call('PEXPIREAT', KEYS[1], expire_at)
return 'ok'
"#,
    )
}

/// Records a grant atomically with its task's state. KEYS[1] = task hash;
/// outside Cluster also KEYS[2] = the subject's index and KEYS[3] = the
/// disabled hash, so the whole mint is this one script (in Cluster those
/// live in other slots, and the caller does their part around it).
/// ARGV: base, task_id, grant_id, grant record (layout 2), exp_ms, now_ms, parent_grant|"",
/// the most live grants the task may hold, subject, the most live grants
/// the subject may hold.
/// Returns "ok", "task_missing", "task_over:<state>", "outlives", "exists",
/// "task_full", "parent_not_live" (a delegated grant whose parent is unknown, revoked,
/// expired, of another task, or expiring before it), and with KEYS[2..3]
/// "disabled" or "identity_full" (the subject's index holds its bound of
/// grants not yet expired; the caller prunes the dead ones and retries).
pub(crate) fn record_grant() -> Script {
    Script::new(&with_load(
        r#"#!lua
-- Declared (no flags): Redis refuses the whole script at a full noeviction
-- maxmemory. Without the shebang the OOM check comes only at the first
-- write, and a first write that may not enlarge memory (ZREMRANGEBYSCORE)
-- exempts every later one: a full Redis took mints without bound.
local base, task, gid, json, exp, now, parent, cap = ARGV[1], ARGV[2], ARGV[3], ARGV[4], tonumber(ARGV[5]), tonumber(ARGV[6]), ARGV[7], tonumber(ARGV[8])
local subject, icap, sidx = ARGV[9], tonumber(ARGV[10]), KEYS[2]
local t = redis.call('HMGET', KEYS[1], 'state', 'deadline')
if not t[1] then return 'task_missing' end
if t[1] ~= 'active' then return 'task_over:' .. t[1] end
local deadline = tonumber(t[2])
if now >= deadline then return 'task_over:expired' end
if exp > deadline then return 'outlives' end
local hash = base .. 'G'
if redis.call('HEXISTS', hash, gid) == 1 then return 'exists' end
if redis.call('EXISTS', base .. 'grant:' .. gid, base .. 'revoked:' .. gid) > 0 then return 'exists' end
if parent ~= '' then
  -- INVARIANT: a child is recorded only under a live parent, atomically with
  -- the parent's revocation (revoke_grant_tree), so no child escapes it.
  local p, pmark, pt, _, pexp = load(base, parent)
  if not p or pt ~= task or pmark then return 'parent_not_live' end
  if pexp <= now or exp > pexp then return 'parent_not_live' end
end
-- The task's index holds exactly its live grants once expired members are
-- pruned: revocation removes members, and an ended task records nothing.
local idx = base .. 'grants:' .. task
-- Expired grants leave the hash with the index (their records are no use).
local gone = redis.call('ZRANGE', idx, '-inf', now, 'BYSCORE')
if #gone > 0 then
  for i = 1, #gone, 1000 do redis.call('HDEL', hash, unpack(gone, i, math.min(i + 999, #gone))) end
  redis.call('ZREMRANGEBYSCORE', idx, '-inf', now)
end
if redis.call('ZCARD', idx) >= cap then return 'task_full' end
if sidx then
  -- A disable made anywhere before this script is seen here; one made
  -- after finds the grant in the subject's index (written below, atomically).
  if redis.call('HEXISTS', KEYS[3], subject) == 1 then return 'disabled' end
  redis.call('ZREMRANGEBYSCORE', sidx, '-inf', now)
  if redis.call('ZCARD', sidx) >= icap then return 'identity_full' end
end
redis.call('HSET', hash, gid, json)
-- The hash lives as long as its longest grant: dropped whole once every
-- grant of the tree has expired.
local ht = redis.call('PEXPIRETIME', hash)
if ht < exp then redis.call('PEXPIREAT', hash, exp) end
redis.call('ZADD', idx, exp, gid)
local tttl = redis.call('PEXPIRETIME', KEYS[1])
-- Expiries are rewritten only when they move: each PEXPIREAT is a write
-- replicated and appended to the AOF. The subject index's moves in whole
-- minutes past its latest grant (so once a minute, not on every grant; an
-- idle index lives up to a minute longer).
if tttl > 0 and redis.call('PEXPIRETIME', idx) ~= tttl then redis.call('PEXPIREAT', idx, tttl) end
if sidx then
  redis.call('ZADD', sidx, exp, gid)
  local st = redis.call('PEXPIRETIME', sidx)
  if st ~= -2 and st < exp then redis.call('PEXPIREAT', sidx, exp + 60000 - exp % 60000) end
end
if parent ~= '' then
  local dkey = base .. 'delegated:' .. parent
  redis.call('SADD', dkey, gid)
  local _, _, _, _, pexp = load(base, parent)
  if pexp > 0 then redis.call('PEXPIREAT', dkey, math.max(pexp, exp)) end
end
return 'ok'
"#,
    ))
}

/// Reads a grant with what decides its liveness. KEYS[1] = a key of the
/// grant's tree (routing). ARGV: base, grant_id.
/// Returns nil, or {grant_record, revoked_json|false, task_state, task_ended_ms|false, task_reason|false}.
pub(crate) fn read_grant() -> Script {
    Script::new(&with_load(
        r#"
local g, r, task = load(ARGV[1], ARGV[2])
if not g then return nil end
local t = redis.call('HMGET', ARGV[1] .. 'task:' .. task, 'state', 'ended', 'reason')
return {g, r or false, t[1] or 'missing', t[2] or false, t[3] or false}
"#,
    ))
}

/// Revokes a grant tree (the grant and all delegated from it, at any depth)
/// in one atomic step. Live = recorded, not expired, not revoked, task active.
/// KEYS[1] = root grant key. ARGV: base, root_grant_id, now_ms, reason,
/// then the ids whose revocation events are already published.
/// If a live grant of the tree is not among them, changes nothing and
/// returns {"more", gid, exp_ms, ...} (the caller publishes and retries);
/// else marks every live grant revoked and returns {"ok", count, root_revoked 0|1}.
pub(crate) fn revoke_grant_tree() -> Script {
    Script::new(&with_load(
        r#"#!lua flags=allow-oom
local base, root, now, reason = ARGV[1], ARGV[2], tonumber(ARGV[3]), ARGV[4]
local published = {}
for i = 5, #ARGV do published[ARGV[i]] = true end
local live, extra, seen, stack = {}, {}, {}, {root}
while #stack > 0 do
  local gid = table.remove(stack)
  if not seen[gid] then
    seen[gid] = true
    for _, c in ipairs(redis.call('SMEMBERS', base .. 'delegated:' .. gid)) do table.insert(stack, c) end
    local g, mark, t, _, exp, in_hash = load(base, gid)
    if g and not mark then
      local state = redis.call('HGET', base .. 'task:' .. t, 'state')
      if state == 'active' and exp > now then
        table.insert(live, {gid, exp, t, g, in_hash})
        if not published[gid] then
          table.insert(extra, gid)
          table.insert(extra, tostring(exp))
        end
      end
    end
  end
end
if #extra > 0 then
  table.insert(extra, 1, 'more')
  return extra
end
local root_revoked = 0
for _, l in ipairs(live) do
  redis.call('SET', base .. 'revoked:' .. l[1], mark_of(now, reason, l[4], l[5]), 'PXAT', l[2])
  if l[5] then redis.call('HDEL', base .. 'G', l[1]) end
  redis.call('ZREM', base .. 'grants:' .. l[3], l[1])
  if l[1] == root then root_revoked = 1 end
end
return {'ok', tostring(#live), tostring(root_revoked)}
"#,
    ))
}

/// Revokes a grant tree in one step, outside Cluster: publishes one event
/// per live grant of the tree on the feed, trims the feed by age, marks
/// them revoked, and answers the grant as `read_grant` would. Publishing
/// and applying are one atomic script, so no reader sees one without the
/// other. A live grant without delegations costs one hash read, one set
/// read (its delegations), its task's state, the append, the trim and the
/// three writes: nothing is read twice or read back.
/// KEYS[1] = root grant key, KEYS[2] = the feed stream. ARGV: base,
/// root_grant_id, now_ms, reason, holder|"" (refuse unless the grant's
/// subject), feed max length, the events' shared members as JSON
/// (`"revoked_at":…,"reason":…`, see `event_tail`), retention_ms.
/// Returns nil for an unknown grant, {"not_holder", grant_json},
/// or {"ok", count, root_revoked 0|1, then what `read_grant` returns}.
pub(crate) fn revoke_grant_now() -> Script {
    Script::new(&with_load(
        r#"#!lua flags=allow-oom
local base, root, now, reason, holder = ARGV[1], ARGV[2], tonumber(ARGV[3]), ARGV[4], ARGV[5]
local maxlen, tail, retention = ARGV[6], ARGV[7], tonumber(ARGV[8])
local hash = base .. 'G'
-- A record still in the tree's hash carries no revocation mark: revoking
-- moves it out atomically (and record_grant refuses an id with a mark),
-- so a hit there is the whole read of a live-layout grant.
local g = redis.call('HGET', hash, root)
local mark, task, gs, gexp, in_hash = false, '', '', 0, true
if g then
  local e, t, s = string.match(g, '^(%d+)\t([^\t]*)\t([^\t]*)\t')
  if e then task, gs, gexp = t, s, tonumber(e) end
else
  g, mark, task, gs, gexp, in_hash = load(base, root)
  if not g then return nil end
end
if holder ~= '' and gs ~= holder then return {'not_holder', g} end
-- RFC 3339 of epoch milliseconds (days to civil date: H. Hinnant's algorithm).
local function rfc3339(ms)
  local secs = math.floor(ms / 1000)
  local days = math.floor(secs / 86400)
  local rem = secs - days * 86400
  local z = days + 719468
  local era = math.floor(z / 146097)
  local doe = z - era * 146097
  local yoe = math.floor((doe - math.floor(doe / 1460) + math.floor(doe / 36524) - math.floor(doe / 146096)) / 365)
  local doy = doe - (365 * yoe + math.floor(yoe / 4) - math.floor(yoe / 100))
  local mp = math.floor((5 * doy + 2) / 153)
  local d = doy - math.floor((153 * mp + 2) / 5) + 1
  local m = mp < 10 and mp + 3 or mp - 9
  local y = yoe + era * 400 + (m <= 2 and 1 or 0)
  return string.format('%04d-%02d-%02dT%02d:%02d:%02d.%03dZ', y, m, d, math.floor(rem / 3600),
    math.floor((rem % 3600) / 60), rem % 60, ms - secs * 1000)
end
-- The tree: the root from the read above, then what was delegated from it.
local live, seen, stack, tasks = {}, {[root] = true}, {}, {}
local function visit(gid, cg, cmark, t, exp, ih)
  for _, c in ipairs(redis.call('SMEMBERS', base .. 'delegated:' .. gid)) do table.insert(stack, c) end
  if cg and not cmark then
    if tasks[t] == nil then tasks[t] = redis.call('HGET', base .. 'task:' .. t, 'state') or false end
    if tasks[t] == 'active' and exp > now then table.insert(live, {gid, exp, t, cg, ih}) end
  end
end
visit(root, g, mark, task, gexp, in_hash)
while #stack > 0 do
  local gid = table.remove(stack)
  if not seen[gid] then
    seen[gid] = true
    local cg, cmark, t, _, exp, ih = load(base, gid)
    visit(gid, cg, cmark, t, exp, ih)
  end
end
-- Events are built from the JSON the broker encoded (`tail`: revoked_at
-- and reason) and ids the store made (alphanumeric, `-`, `_`): no escaping.
local last
for _, l in ipairs(live) do
  last = redis.call('XADD', KEYS[2], 'MAXLEN', '~', maxlen, '*', 'r',
    '{"target":{"grant":"' .. l[1] .. '"},' .. tail .. ',"not_after":"' .. rfc3339(l[2]) .. '"}')
end
if last then
  -- Trimmed by age in Redis's clock, which the stream ids carry.
  local newest = tonumber(string.match(last, '^(%d+)-'))
  if newest and newest > retention then redis.call('XTRIM', KEYS[2], 'MINID', '~', newest - retention) end
end
local root_mark = mark
for _, l in ipairs(live) do
  local m = mark_of(now, reason, l[4], l[5])
  redis.call('SET', base .. 'revoked:' .. l[1], m, 'PXAT', l[2])
  if l[5] then redis.call('HDEL', hash, l[1]) end
  redis.call('ZREM', base .. 'grants:' .. l[3], l[1])
  if l[1] == root then root_mark = m end
end
-- The answer is what `read_grant` would say now, from what this script
-- already holds: a grant revoked here has the mark just written and an
-- active task (checked above).
if root_mark ~= mark then return {'ok', tostring(#live), '1', g, root_mark, 'active', false, false} end
local t = redis.call('HMGET', base .. 'task:' .. task, 'state', 'ended', 'reason')
return {'ok', tostring(#live), '0', g, mark or false, t[1] or 'missing', t[2] or false, t[3] or false}
"#,
    ))
}

/// The active tasks of a task tree (the task and its descendants): stored
/// active and not past their deadline.
/// KEYS[1] = the task hash. ARGV: base, task_id, now_ms, skip ids...
/// Returns nil if the task is unknown, else {task, deadline_ms, ...}.
pub(crate) fn active_task_tree() -> Script {
    Script::new(
        r#"
local base = ARGV[1]
if redis.call('EXISTS', KEYS[1]) == 0 then return nil end
local now = tonumber(ARGV[3])
local skip = {}
for i = 4, #ARGV do skip[ARGV[i]] = true end
local out, seen, queue = {}, {}, {ARGV[2]}
local head = 1
while head <= #queue do
  local id = queue[head]
  head = head + 1
  if not seen[id] then
    seen[id] = true
    for _, c in ipairs(redis.call('SMEMBERS', base .. 'children:' .. id)) do table.insert(queue, c) end
    local t = redis.call('HMGET', base .. 'task:' .. id, 'state', 'deadline')
    if t[1] == 'active' and tonumber(t[2]) > now and not skip[id] then
      table.insert(out, id)
      table.insert(out, t[2])
    end
  end
end
return out
"#,
    )
}

/// Ends tasks. KEYS[1] = any key of the tree. ARGV: base, now_ms, state,
/// reason, task ids... Returns {tasks_ended, live_grants_at_end}.
pub(crate) fn end_tasks() -> Script {
    Script::new(
        r#"#!lua flags=allow-oom
local base, now, state, reason = ARGV[1], tonumber(ARGV[2]), ARGV[3], ARGV[4]
local ended, live = 0, 0
for i = 5, #ARGV do
  local key = base .. 'task:' .. ARGV[i]
  local t = redis.call('HMGET', key, 'state', 'deadline')
  if t[1] == 'active' and tonumber(t[2]) > now then
    redis.call('HSET', key, 'state', state, 'ended', now, 'reason', reason)
    ended = ended + 1
    live = live + redis.call('ZCOUNT', base .. 'grants:' .. ARGV[i], '(' .. now, '+inf')
  end
end
return {ended, live}
"#,
    )
}

/// Live grants of one task. KEYS[1] = task hash. ARGV: base, task_id, now_ms.
pub(crate) fn live_grants() -> Script {
    Script::new(
        r#"
if redis.call('HGET', KEYS[1], 'state') ~= 'active' then return 0 end
return redis.call('ZCOUNT', ARGV[1] .. 'grants:' .. ARGV[2], '(' .. ARGV[3], '+inf')
"#,
    )
}

/// Adds a member to a lazily pruned index (a zset scored by the time after
/// which the member no longer matters). KEYS[1] = the index.
/// ARGV: member, score_ms, now_ms. Drops members whose score has passed,
/// never lowers a member's score, and keeps the key until its latest score.
pub(crate) fn index_add() -> Script {
    Script::new(
        r#"#!lua
-- Declared (no flags): Redis refuses the whole script at a full noeviction
-- maxmemory. Without the shebang the OOM check comes only at the first
-- write, and a first write that may not enlarge memory (ZREMRANGEBYSCORE)
-- exempts every later one: a full Redis took mints without bound.
local member, score, now = ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
redis.call('ZADD', KEYS[1], 'GT', score, member)
local t = redis.call('PEXPIRETIME', KEYS[1])
if t ~= -2 and t < score then redis.call('PEXPIREAT', KEYS[1], score) end
return 'ok'
"#,
    )
}

/// `index_add` with a bound: refuses (changing nothing) to add a new
/// member to an index already holding `cap` members still ahead of `now`.
/// ARGV: member, score_ms, now_ms, cap. Returns "ok" or "full".
pub(crate) fn index_add_capped() -> Script {
    Script::new(
        r#"#!lua
-- Declared (no flags): Redis refuses the whole script at a full noeviction
-- maxmemory. Without the shebang the OOM check comes only at the first
-- write, and a first write that may not enlarge memory (ZREMRANGEBYSCORE)
-- exempts every later one: a full Redis took mints without bound.
local member, score, now, cap = ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3]), tonumber(ARGV[4])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
if not redis.call('ZSCORE', KEYS[1], member) and redis.call('ZCARD', KEYS[1]) >= cap then return 'full' end
redis.call('ZADD', KEYS[1], 'GT', score, member)
local t = redis.call('PEXPIRETIME', KEYS[1])
if t ~= -2 and t < score then redis.call('PEXPIREAT', KEYS[1], score) end
return 'ok'
"#,
    )
}

/// Appends revocation events to the feed stream, also when Redis is at its
/// memory limit (`allow-oom`): a revocation must not fail because mints
/// filled the store; then trims the feed by age, in the same round trip.
/// KEYS[1] = the stream. ARGV: max length, retention_ms, then one JSON
/// event each. Returns the entries' ids.
pub(crate) fn publish_events() -> Script {
    Script::new(
        r#"#!lua flags=allow-oom
local ids = {}
for i = 3, #ARGV do
  table.insert(ids, redis.call('XADD', KEYS[1], 'MAXLEN', '~', ARGV[1], '*', 'r', ARGV[i]))
end
if #ids > 0 then
  -- Trimmed by age in Redis's clock, which the stream ids carry.
  local newest, retention = tonumber(string.match(ids[#ids], '^(%d+)-')), tonumber(ARGV[2])
  if newest and newest > retention then redis.call('XTRIM', KEYS[1], 'MINID', '~', newest - retention) end
end
return ids
"#,
    )
}

/// Marks a subject disabled unless it already is, also when Redis is at its
/// memory limit. KEYS[1] = the disabled hash. ARGV: subject, mark json.
/// Returns 1 if newly disabled.
pub(crate) fn disable_subject() -> Script {
    Script::new(
        r#"#!lua flags=allow-oom
return redis.call('HSETNX', KEYS[1], ARGV[1], ARGV[2])
"#,
    )
}

/// The live ones among some grants of one tree (recorded, not expired, not
/// revoked, task active and not past its deadline). KEYS[1] = any key of the
/// tree. ARGV: base, now_ms, grant ids... Returns {gid, grant_json, ...}.
pub(crate) fn read_live_grants() -> Script {
    Script::new(&with_load(
        r#"
local base, now = ARGV[1], tonumber(ARGV[2])
local out, tasks = {}, {}
for i = 3, #ARGV do
  local gid = ARGV[i]
  local g, mark, task, _, exp = load(base, gid)
  if g and not mark and exp > now then
    local ok = tasks[task]
    if ok == nil then
      local t = redis.call('HMGET', base .. 'task:' .. task, 'state', 'deadline')
      ok = t[1] == 'active' and tonumber(t[2]) > now
      tasks[task] = ok
    end
    if ok then
      table.insert(out, gid)
      table.insert(out, g)
    end
  end
end
return out
"#,
    ))
}

/// Publishes a key unless it was withdrawn. KEYS: jwks hash, withdrawn set.
/// ARGV: kid, json. Returns 1, or 0 for a withdrawn kid.
pub(crate) fn publish_key() -> Script {
    Script::new(
        r#"
if redis.call('SISMEMBER', KEYS[2], ARGV[1]) == 1 then return 0 end
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
return 1
"#,
    )
}

/// Withdraws every key but one, for good. KEYS: jwks hash, withdrawn set.
/// ARGV: the kid to keep. Returns the kids withdrawn.
pub(crate) fn withdraw_keys() -> Script {
    Script::new(
        r#"#!lua flags=allow-oom
local gone = {}
for _, kid in ipairs(redis.call('HKEYS', KEYS[1])) do
  if kid ~= ARGV[1] then
    redis.call('HDEL', KEYS[1], kid)
    redis.call('SADD', KEYS[2], kid)
    table.insert(gone, kid)
  end
end
return gone
"#,
    )
}

/// Quarantines a subject unless a longer quarantine is in force, and drops
/// expired entries of the hash. KEYS[1] = the quarantine hash. ARGV:
/// subject, until_ms, json, now_ms. Entries are JSON with `until_ms`.
pub(crate) fn quarantine() -> Script {
    Script::new(
        r#"#!lua flags=allow-oom
local subject, till, json, now = ARGV[1], tonumber(ARGV[2]), ARGV[3], tonumber(ARGV[4])
local all = redis.call('HGETALL', KEYS[1])
for i = 1, #all, 2 do
  local ok, q = pcall(cjson.decode, all[i + 1])
  if not ok or type(q) ~= 'table' or tonumber(q.until_ms) == nil or tonumber(q.until_ms) <= now then
    redis.call('HDEL', KEYS[1], all[i])
  end
end
local old = redis.call('HGET', KEYS[1], subject)
if old then
  local q = cjson.decode(old)
  if tonumber(q.until_ms) >= till then return 'kept' end
end
redis.call('HSET', KEYS[1], subject, json)
return 'ok'
"#,
    )
}

/// The marker written right before a durable write's `WAIT` (see
/// `RedisStore::durable_write`), also at the memory limit: it makes the
/// `WAIT` cover everything the primary holds. KEYS[1] = the marker (on the
/// write's slot). ARGV: its lifetime in ms.
pub(crate) fn durable_mark() -> Script {
    Script::new(
        r#"#!lua flags=allow-oom
return redis.call('SET', KEYS[1], '1', 'PX', ARGV[1])
"#,
    )
}
