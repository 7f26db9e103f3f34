//! Bounded password hashing: every argon2 computation of the process (sign-up,
//! sign-in, MQTT CONNECT with a password, device provisioning) runs on one
//! small pool of dedicated threads, never on the async executors.
//!
//! - Each thread owns one argon2 memory block (19 MiB with the default
//!   parameters), allocated on its first job and reused for every later one:
//!   peak hashing memory is `threads × block` however many strangers ask at
//!   once, and a burst leaves nothing behind for the allocator to keep.
//! - Work waits in a short queue (`queue_len` jobs). A full queue, or a job
//!   still waiting after `queue_wait_ms`, is answered [`Busy`] without being
//!   computed: the client is told to come back (MQTT v5 CONNACK 0x89, 3.1.1
//!   0x03, REST 503 with `Retry-After`) rather than piling up.
//! - A job whose caller has gone (the connection closed) is skipped.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::mpsc::{self, Receiver, SyncSender, TrySendError};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use argon2::password_hash::{Output, PasswordHash, SaltString, rand_core::OsRng};
use argon2::{Algorithm, Argon2, Block, Params, Version};
use serde::{Deserialize, Serialize};
use tokio::sync::oneshot;

use crate::telemetry::{metrics, names};

/// `[auth.hashing]`: the pool that computes password hashes.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct HashingSettings {
    /// Threads computing argon2, each holding one 19 MiB block for good;
    /// 0 = the number of CPU cores. Env `MAPCAST_HASHING_THREADS`. Default 0.
    pub threads: usize,
    /// Hashing jobs that may wait for a thread; more are answered "server
    /// busy" at once. Env `MAPCAST_HASHING_QUEUE_LEN`. Default 32.
    pub queue_len: usize,
    /// How long a job may wait for a thread before it is answered "server
    /// busy" instead, in milliseconds. Env `MAPCAST_HASHING_QUEUE_WAIT_MS`.
    /// Default 500.
    pub queue_wait_ms: u64,
    /// REST sign-ups and sign-ins one address (IPv6: one /64) may make per
    /// second, sustained, before any password is hashed; more get 429 with
    /// `Retry-After`. 0 = no limit. Env `MAPCAST_HASHING_RATE_PER_ADDRESS`.
    /// Default 2.
    pub rate_per_address: f64,
    /// Sign-ups and sign-ins one address may make in a burst before its rate
    /// applies. Env `MAPCAST_HASHING_BURST_PER_ADDRESS`. Default 20.
    pub burst_per_address: u32,
}

impl Default for HashingSettings {
    fn default() -> Self {
        Self {
            threads: 0,
            queue_len: 32,
            queue_wait_ms: 500,
            rate_per_address: 2.0,
            burst_per_address: 20,
        }
    }
}

/// The hashing pool could not take or finish the job in time.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("password hashing is busy; retry later")]
pub struct Busy;

/// Largest argon2 memory a stored hash may ask for (256 MiB); stored hashes
/// are made here or by `mapcast hash-password`, both 19 MiB.
const MAX_BLOCKS: usize = 256 * 1024;
/// At most one "busy" warning in this period.
const LOG_EVERY: Duration = Duration::from_secs(10);

/// A job: run with the thread's memory, or told it expired (`None`).
type Job = Box<dyn FnOnce(Option<&mut Memory>) + Send>;

/// The handle: cloneable, the threads end once every handle is gone.
#[derive(Clone)]
pub struct HashPool {
    inner: Arc<PoolInner>,
}

struct PoolInner {
    jobs: SyncSender<(Instant, Job)>,
    wait: Duration,
    threads: usize,
    started: Instant,
    /// When the last "busy" warning went out (ms since `started`, +1).
    logged_at: AtomicU64,
    unlogged: AtomicU64,
}

impl std::fmt::Debug for HashPool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HashPool").field("threads", &self.inner.threads).finish()
    }
}

impl HashPool {
    /// Start the threads.
    pub fn new(settings: &HashingSettings) -> Self {
        let threads = match settings.threads {
            0 => std::thread::available_parallelism().map_or(2, usize::from),
            n => n,
        };
        let (jobs, queue) = mpsc::sync_channel(settings.queue_len);
        let queue = Arc::new(Mutex::new(queue));
        for i in 0..threads {
            let queue = queue.clone();
            std::thread::Builder::new()
                .name(format!("mapcast-hash-{i}"))
                .spawn(move || work(&queue))
                .expect("spawn a password hashing thread");
        }
        let inner = PoolInner {
            jobs,
            wait: Duration::from_millis(settings.queue_wait_ms),
            threads,
            started: Instant::now(),
            logged_at: AtomicU64::new(0),
            unlogged: AtomicU64::new(0),
        };
        Self { inner: Arc::new(inner) }
    }

    /// Threads in the pool.
    pub fn threads(&self) -> usize {
        self.inner.threads
    }

    /// An argon2id PHC string of `secret` with a random salt.
    pub async fn hash(&self, secret: String) -> Result<String, Busy> {
        self.run(move |memory| hash_with(memory, &secret)).await
    }

    /// Whether `secret` matches the argon2 PHC string `phc`.
    pub async fn verify(&self, secret: String, phc: String) -> Result<bool, Busy> {
        self.run(move |memory| verify_with(memory, &secret, &phc)).await
    }

    async fn run<T: Send + 'static>(
        &self,
        f: impl FnOnce(&mut Memory) -> T + Send + 'static,
    ) -> Result<T, Busy> {
        let (tx, rx) = oneshot::channel();
        let job: Job = Box::new(move |memory| {
            // The caller went away (its connection closed): nothing to compute.
            if tx.is_closed() {
                return;
            }
            let _ = tx.send(memory.map(f).ok_or(Busy));
        });
        let deadline = Instant::now() + self.inner.wait;
        let answer = match self.inner.jobs.try_send((deadline, job)) {
            Ok(()) => rx.await.unwrap_or(Err(Busy)),
            Err(TrySendError::Full(_) | TrySendError::Disconnected(_)) => Err(Busy),
        };
        if answer.is_err() {
            self.count_busy();
        }
        answer
    }

    fn count_busy(&self) {
        metrics::global().auth_hashing_busy.fetch_add(1, Relaxed);
        let inner = &self.inner;
        let now_ms = inner.started.elapsed().as_millis() as u64 + 1;
        let last = inner.logged_at.load(Relaxed);
        let due = last == 0 || now_ms.saturating_sub(last) >= LOG_EVERY.as_millis() as u64;
        if !due || inner.logged_at.compare_exchange(last, now_ms, Relaxed, Relaxed).is_err() {
            inner.unlogged.fetch_add(1, Relaxed);
            return;
        }
        tracing::warn!(
            { names::AUTH_HASHING_THREADS } = inner.threads,
            refused_since_last_log = inner.unlogged.swap(0, Relaxed),
            "sign-in refused: password hashing is busy"
        );
    }
}

/// One hashing thread: take jobs until every handle is gone.
fn work(queue: &Mutex<Receiver<(Instant, Job)>>) {
    let mut memory = Memory::default();
    loop {
        // The lock is held while waiting: the other threads would wait anyway.
        #[allow(clippy::disallowed_methods, reason = "a hashing thread of its own, no executor")]
        let next = queue.lock().unwrap_or_else(|e| e.into_inner()).recv();
        let Ok((deadline, job)) = next else { return };
        if Instant::now() > deadline {
            job(None);
        } else {
            job(Some(&mut memory));
        }
    }
}

/// A hashing thread's argon2 memory, grown to the largest parameters seen
/// (once, to the default 19 MiB in practice) and reused.
#[derive(Default)]
pub struct Memory {
    blocks: Vec<Block>,
}

impl Memory {
    fn blocks(&mut self, count: usize) -> Option<&mut [Block]> {
        if count > MAX_BLOCKS {
            return None;
        }
        if self.blocks.len() < count {
            self.blocks.resize(count, Block::default());
        }
        Some(&mut self.blocks[..count])
    }
}

/// argon2id with the default parameters (19 MiB, 2 passes), as a PHC string.
fn hash_with(memory: &mut Memory, secret: &str) -> String {
    let params = Params::default();
    let salt = SaltString::generate(&mut OsRng);
    let mut salt_bytes = [0u8; 64];
    let salt_bytes = salt.decode_b64(&mut salt_bytes).expect("a generated salt decodes");
    let mut out = [0u8; Params::DEFAULT_OUTPUT_LEN];
    let blocks = memory.blocks(params.block_count()).expect("the default parameters fit");
    Argon2::new(Algorithm::Argon2id, Version::V0x13, params.clone())
        .hash_password_into_with_memory(secret.as_bytes(), salt_bytes, &mut out, blocks)
        .expect("argon2 with the default parameters cannot fail");
    PasswordHash {
        algorithm: Algorithm::Argon2id.ident(),
        version: Some(Version::V0x13.into()),
        params: (&params).try_into().expect("the default parameters encode"),
        salt: Some(salt.as_salt()),
        hash: Some(Output::new(&out).expect("a 32-byte output")),
    }
    .to_string()
}

/// Whether `secret` matches `phc`; a string that is not an argon2 PHC
/// string (or asks for more than [`MAX_BLOCKS`]) matches nothing.
fn verify_with(memory: &mut Memory, secret: &str, phc: &str) -> bool {
    let Ok(parsed) = PasswordHash::new(phc) else { return false };
    let (Some(salt), Some(expected)) = (parsed.salt, parsed.hash) else { return false };
    let Ok(algorithm) = Algorithm::try_from(parsed.algorithm) else { return false };
    let version = match parsed.version.map(Version::try_from) {
        None => Version::default(),
        Some(Ok(v)) => v,
        Some(Err(_)) => return false,
    };
    let Ok(params) = Params::try_from(&parsed) else { return false };
    let mut salt_buf = [0u8; 64];
    let Ok(salt) = salt.decode_b64(&mut salt_buf) else { return false };
    let Some(blocks) = memory.blocks(params.block_count()) else {
        tracing::warn!("a stored password hash asks for more argon2 memory than allowed");
        return false;
    };
    let mut out = vec![0u8; expected.len()];
    let computed = Argon2::new(algorithm, version, params).hash_password_into_with_memory(
        secret.as_bytes(),
        salt,
        &mut out,
        blocks,
    );
    // `Output`'s equality is constant-time.
    computed.is_ok() && Output::new(&out).is_ok_and(|out| out == expected)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::broker::auth::{hash_password, verify_password};

    fn pool(threads: usize, queue_len: usize, queue_wait_ms: u64) -> HashPool {
        HashPool::new(&HashingSettings {
            threads,
            queue_len,
            queue_wait_ms,
            ..HashingSettings::default()
        })
    }

    #[tokio::test]
    async fn hashes_are_standard_argon2id_phc_strings_both_ways() {
        let pool = pool(1, 4, 5_000);

        let ours = pool.hash("right horse".into()).await.unwrap();
        let theirs = hash_password("right horse");

        assert!(ours.starts_with("$argon2id$v=19$m=19456,t=2,p=1$"), "{ours}");
        assert!(verify_password("right horse", &ours));
        assert!(!verify_password("wrong horse", &ours));
        assert!(pool.verify("right horse".into(), theirs.clone()).await.unwrap());
        assert!(!pool.verify("wrong horse".into(), theirs).await.unwrap());
        assert!(!pool.verify("x".into(), "not a hash".into()).await.unwrap());
    }

    #[tokio::test]
    async fn a_full_queue_is_busy_at_once_and_the_pool_recovers() {
        let pool = pool(1, 1, 5_000);
        let phc = hash_password("right horse");

        let burst: Vec<_> = (0..8).map(|_| pool.verify("guess".into(), phc.clone())).collect();
        let answers = futures::future::join_all(burst).await;

        let busy = answers.iter().filter(|a| a.is_err()).count();
        assert!(busy >= 6, "one running and one queued at most: {answers:?}");
        assert!(pool.verify("right horse".into(), phc).await.unwrap());
    }

    #[tokio::test]
    async fn a_job_that_waited_past_its_deadline_is_busy_not_computed() {
        let pool = pool(1, 8, 1);
        let phc = hash_password("right horse");

        let burst: Vec<_> = (0..4).map(|_| pool.verify("guess".into(), phc.clone())).collect();
        let answers = futures::future::join_all(burst).await;

        assert!(answers.iter().skip(1).any(Result::is_err), "{answers:?}");
    }
}
