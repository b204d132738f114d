//! The physical limits, measured in the same run: `ring` signatures and
//! verifications per core (in process, one thread), and `redis-benchmark`
//! for the Redis commands the mint path uses, with Redis's own CPU per
//! command read from `/proc`.

use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use ring::rand::SystemRandom;
use ring::signature::{self, EcdsaKeyPair, Ed25519KeyPair, KeyPair as _, UnparsedPublicKey};
use serde::{Deserialize, Serialize};

use crate::procstat::CpuMeter;

/// Operations per second of one thread.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct PerCore {
    /// Operations done.
    pub ops: u64,
    /// Per second.
    pub rate: f64,
    /// Microseconds each.
    pub us_per_op: f64,
}

/// `ring` on one core.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RingLimits {
    /// ES256 (ECDSA P-256, SHA-256, fixed-size signature) signing.
    pub es256_sign: PerCore,
    /// ES256 verification.
    pub es256_verify: PerCore,
    /// Ed25519 signing.
    pub ed25519_sign: PerCore,
    /// Ed25519 verification.
    pub ed25519_verify: PerCore,
}

/// A JWS signing input of a real token's size.
fn signing_input() -> Vec<u8> {
    let mut v = b"eyJhbGciOiJFUzI1NiIsImtpZCI6ImJlbmNoIiwidHlwIjoiYXQrand0In0.".to_vec();
    v.extend(std::iter::repeat_n(b'A', 400));
    v
}

pub(crate) fn per_core(d: Duration, mut f: impl FnMut() -> anyhow::Result<()>) -> anyhow::Result<PerCore> {
    // Warm up caches and lazily initialised tables.
    for _ in 0..50 {
        f()?;
    }
    let start = Instant::now();
    let mut ops = 0u64;
    while start.elapsed() < d {
        for _ in 0..50 {
            f()?;
        }
        ops += 50;
    }
    let secs = start.elapsed().as_secs_f64();
    Ok(PerCore {
        ops,
        rate: ops as f64 / secs,
        us_per_op: secs * 1e6 / ops as f64,
    })
}

/// Measures `ring` for `each` per operation kind, on the calling thread.
pub fn ring(each: Duration) -> anyhow::Result<RingLimits> {
    let rng = SystemRandom::new();
    let msg = signing_input();

    let es_alg = &signature::ECDSA_P256_SHA256_FIXED_SIGNING;
    let pkcs8 = EcdsaKeyPair::generate_pkcs8(es_alg, &rng).map_err(|_| anyhow::anyhow!("P-256 keygen"))?;
    let es = EcdsaKeyPair::from_pkcs8(es_alg, pkcs8.as_ref(), &rng).map_err(|e| anyhow::anyhow!("P-256 key: {e}"))?;
    let es_sig = es.sign(&rng, &msg).map_err(|_| anyhow::anyhow!("P-256 sign"))?;
    let es_pub = UnparsedPublicKey::new(&signature::ECDSA_P256_SHA256_FIXED, es.public_key().as_ref().to_vec());

    let ed_pkcs8 = Ed25519KeyPair::generate_pkcs8(&rng).map_err(|_| anyhow::anyhow!("Ed25519 keygen"))?;
    let ed = Ed25519KeyPair::from_pkcs8(ed_pkcs8.as_ref()).map_err(|e| anyhow::anyhow!("Ed25519 key: {e}"))?;
    let ed_sig = ed.sign(&msg);
    let ed_pub = UnparsedPublicKey::new(&signature::ED25519, ed.public_key().as_ref().to_vec());

    Ok(RingLimits {
        es256_sign: per_core(each, || {
            std::hint::black_box(es.sign(&rng, &msg).map_err(|_| anyhow::anyhow!("sign"))?);
            Ok(())
        })?,
        es256_verify: per_core(each, || {
            es_pub
                .verify(&msg, es_sig.as_ref())
                .map_err(|_| anyhow::anyhow!("verify"))
        })?,
        ed25519_sign: per_core(each, || {
            std::hint::black_box(ed.sign(&msg));
            Ok(())
        })?,
        ed25519_verify: per_core(each, || {
            ed_pub
                .verify(&msg, ed_sig.as_ref())
                .map_err(|_| anyhow::anyhow!("verify"))
        })?,
    })
}

/// One `redis-benchmark` test.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RedisBench {
    /// What ran (`SET`, `ZADD`, or the grant-write script).
    pub test: String,
    /// Requests per second, as redis-benchmark reports.
    pub rate: f64,
    /// p50 latency in ms, as redis-benchmark reports.
    pub p50_ms: f64,
    /// redis-server CPU µs per request, from `/proc`.
    pub redis_cpu_us_per_op: Option<f64>,
}

/// The shape of one grant write, as one server-side transaction: the grant
/// record as a field of its task tree's hash (which expires with the tree's
/// latest grant), its entry in the task's index and in the subject's index.
/// This is the floor for what the mint path must write.
pub const GRANT_WRITE_LUA: &str = "redis.call('HSET', KEYS[1], ARGV[1], ARGV[2]) \
redis.call('PEXPIREAT', KEYS[1], 1800000000000) \
redis.call('ZADD', KEYS[2], 1800000000000, ARGV[1]) \
redis.call('ZADD', KEYS[3], 1800000000000, ARGV[1]) return 1";

/// A stored grant's size (layout 2, see tessera-store's `record.rs`).
const GRANT_JSON_BYTES: usize = 155;

/// Runs `redis-benchmark` against `127.0.0.1:port` (`pid` = the server, for
/// its CPU): SET, GET, ZADD and the grant-write script, `requests` each
/// with 16 clients and no pipelining, like the broker's one-call-per-step path.
pub fn redis_benchmark(port: u16, pid: u32, requests: u64) -> anyhow::Result<Vec<RedisBench>> {
    let mut out = Vec::new();
    let value = "v".repeat(GRANT_JSON_BYTES);
    let tests: Vec<(&str, Vec<String>)> = vec![
        (
            "SET",
            vec!["-t".into(), "set".into(), "-d".into(), GRANT_JSON_BYTES.to_string()],
        ),
        ("GET", vec!["-t".into(), "get".into()]),
        ("ZADD", vec!["-t".into(), "zadd".into()]),
        (
            "grant write (EVAL: HSET + 2 ZADD)",
            vec![
                "EVAL".into(),
                GRANT_WRITE_LUA.into(),
                "3".into(),
                "bench:{t}:G".into(),
                "bench:{t}:grants".into(),
                "bench:subject".into(),
                "g__rand_int__".into(),
                value,
            ],
        ),
    ];
    for (name, args) in tests {
        let meter = CpuMeter::start(&[("redis-server", pid)])?;
        let o = Command::new("redis-benchmark")
            .args(["-h", "127.0.0.1", "-p", &port.to_string()])
            .args(["-n", &requests.to_string(), "-c", "16", "-r", "1000000", "--csv"])
            .args(&args)
            .output()
            .context("cannot run redis-benchmark (Debian: redis-tools)")?;
        let cpu = meter.stop()?;
        anyhow::ensure!(
            o.status.success(),
            "redis-benchmark {name}: {}",
            String::from_utf8_lossy(&o.stderr)
        );
        let text = String::from_utf8_lossy(&o.stdout);
        let (rate, p50_ms) =
            parse_csv(&text).with_context(|| format!("redis-benchmark {name}: cannot read {text:?}"))?;
        out.push(RedisBench {
            test: name.to_owned(),
            rate,
            p50_ms,
            redis_cpu_us_per_op: cpu.per_op(requests),
        });
    }
    // The benchmark's keys must not count as grants in later memory figures.
    let _ = crate::procs::redis_cmd(&format!("redis://127.0.0.1:{port}"), &["FLUSHALL"]);
    Ok(out)
}

/// `"test","rps","avg_latency_ms","min_latency_ms","p50_latency_ms",...` → (rps, p50).
fn parse_csv(text: &str) -> Option<(f64, f64)> {
    let mut lines = text.lines().filter(|l| !l.trim().is_empty());
    let header: Vec<String> = lines
        .next()?
        .split(',')
        .map(|s| s.trim_matches('"').to_owned())
        .collect();
    let row: Vec<String> = lines
        .next_back()?
        .split(',')
        .map(|s| s.trim_matches('"').to_owned())
        .collect();
    // Only the first column (the test, which may be a whole command) can
    // hold commas: count the numeric columns from the right.
    let col = |name: &str| -> Option<f64> {
        let i = header.iter().position(|h| h == name)?;
        let from_right = header.len().checked_sub(i)?;
        row.get(row.len().checked_sub(from_right)?)?.parse().ok()
    };
    Some((col("rps")?, col("p50_latency_ms").unwrap_or(0.0)))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, reason = "test")]

    use super::*;

    #[test]
    fn ring_measures_every_operation() {
        let r = ring(Duration::from_millis(20)).unwrap();
        for p in [r.es256_sign, r.es256_verify, r.ed25519_sign, r.ed25519_verify] {
            assert!(p.ops > 0 && p.rate > 0.0 && p.us_per_op > 0.0, "{p:?}");
        }
    }

    #[test]
    fn redis_benchmark_csv_is_read() {
        let csv = "\"test\",\"rps\",\"avg_latency_ms\",\"min_latency_ms\",\"p50_latency_ms\",\"p95_latency_ms\"\n\"SET\",\"41666.67\",\"0.350\",\"0.100\",\"0.327\",\"0.600\"\n";
        assert_eq!(parse_csv(csv), Some((41666.67, 0.327)));
        assert_eq!(parse_csv("nonsense"), None);
        let eval =
            "\"test\",\"rps\",\"p50_latency_ms\"\n\"EVAL redis.call('SET', KEYS[1]) 1 k\",\"70000.00\",\"0.175\"\n";
        assert_eq!(parse_csv(eval), Some((70000.0, 0.175)));
    }
}
