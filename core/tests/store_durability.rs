//! Durability under SIGKILL (issue 4, item 4). A child process appends events
//! to an encrypted store and prints the sequence number of each acknowledged
//! event (after `append_event` returned); the parent kills it with SIGKILL at a
//! random moment, reopens the store and checks it.
//!
//! - `Immediate`, 100 rounds: the store opens cleanly and holds every
//!   acknowledged event, in order, nothing torn.
//! - `Batched { 50 ms }`, 20 rounds: the store opens cleanly, holds a gap-free
//!   prefix of the events, and loses only events acknowledged shortly before
//!   the kill (the documented window), never older ones.
//!
//! The child is this test binary itself, re-executed with `CHILD_ENV` set and
//! `--exact <test>`. Replay a run with `L2REC_DURABILITY_SEED=<seed printed>`.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::process::ExitStatusExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant, SystemTime};

use l2rec::store::{Durability, Event, Store, StoreConfig, UserRecord};

const IMMEDIATE_TEST: &str = "acknowledged_events_survive_sigkill";
const BATCHED_TEST: &str = "batched_mode_loses_only_the_last_flush_window";
/// Set in the child: the store directory.
const CHILD_ENV: &str = "L2REC_STORE_DURABILITY_CHILD";
const SEED_ENV: &str = "L2REC_DURABILITY_SEED";
const USER: &str = "durable-user";
const BATCH_MS: u64 = 50;
/// In `Batched` mode, events acknowledged this long before the kill must
/// survive: two flush intervals plus generous slack for a loaded machine.
const BATCHED_SAFE_AGE: Duration = Duration::from_millis(2 * BATCH_MS + 400);
/// A child that is never killed stops by itself after this long.
const CHILD_LIFETIME: Duration = Duration::from_secs(30);

fn config(dir: &Path, durability: Durability) -> StoreConfig {
    StoreConfig {
        path: dir.to_path_buf(),
        master_key: Some([0x33; 32]),
        durability,
        // Large enough that retention never drops an event in this test.
        max_events_per_user: 1_000_000,
    }
}

fn item_id(seq: u64) -> String {
    format!("item-{seq}")
}

#[test]
fn acknowledged_events_survive_sigkill() {
    let durability = Durability::Immediate;
    match std::env::var(CHILD_ENV) {
        Ok(dir) => child(&config(Path::new(&dir), durability)),
        Err(_) => parent(IMMEDIATE_TEST, durability, 100, Duration::from_millis(50)),
    }
}

#[test]
fn batched_mode_loses_only_the_last_flush_window() {
    let durability = Durability::Batched {
        flush_every_ms: BATCH_MS,
    };
    match std::env::var(CHILD_ENV) {
        Ok(dir) => child(&config(Path::new(&dir), durability)),
        Err(_) => parent(BATCHED_TEST, durability, 20, Duration::from_millis(600)),
    }
}

/// Appends events until killed, acknowledging each on stdout only after
/// `append_event` has returned. Every 4th event it also writes the user
/// record with `version = seq` and acknowledges that.
fn child(config: &StoreConfig) {
    let store = Store::open(config.clone()).expect("the child opens the store");
    let mut next = store.events(USER).expect("the child reads events").len() as u64;
    let deadline = Instant::now() + CHILD_LIFETIME;
    let mut out = std::io::stdout().lock();
    while Instant::now() < deadline {
        let event = Event {
            item_id: item_id(next),
            timestamp_ms: next as i64,
            kind: "view".into(),
        };
        let seq = store.append_event(USER, &event).expect("append");
        assert_eq!(seq, next, "sequence numbers are contiguous");
        writeln!(out, "ack {seq}")
            .and_then(|()| out.flush())
            .expect("stdout");
        if seq.is_multiple_of(4) {
            let record = UserRecord {
                phi: vec![seq as f32; 16],
                version: seq,
            };
            store.put_user(USER, &record).expect("put_user");
            writeln!(out, "user {seq}")
                .and_then(|()| out.flush())
                .expect("stdout");
        }
        next += 1;
        if config.durability != Durability::Immediate {
            // An app's event rate, generously: ~1000/s, not a tight loop.
            std::thread::sleep(Duration::from_millis(1));
        }
    }
}

/// xorshift64: enough randomness for kill times, and replayable from a seed.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    fn below(&mut self, limit: Duration) -> Duration {
        Duration::from_micros(self.next() % limit.as_micros().max(1) as u64)
    }
}

fn seed() -> u64 {
    std::env::var(SEED_ENV)
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            let now = SystemTime::now()
                .duration_since(SystemTime::UNIX_EPOCH)
                .unwrap();
            now.as_nanos() as u64 | 1
        })
}

/// When to kill a child: a fifth of the rounds at a random moment in its
/// first 40 ms (often while it is still opening or creating the store), the
/// rest at a random moment up to `window` after its first acknowledgement.
enum KillAt {
    AfterStart(Duration),
    AfterFirstAck(Duration),
}

fn kill_at(rng: &mut Rng, window: Duration) -> KillAt {
    if rng.next().is_multiple_of(5) {
        KillAt::AfterStart(rng.below(Duration::from_millis(40)))
    } else {
        KillAt::AfterFirstAck(rng.below(window))
    }
}

/// What one killed child acknowledged, with how long before the kill.
#[derive(Default)]
struct Acks {
    /// (seq, time the parent read the ack).
    events: Vec<(u64, Instant)>,
    max_user_version: Option<u64>,
}

impl Acks {
    fn record(&mut self, line: &str, at: Instant) {
        let mut words = line.split_whitespace();
        let kind = words.next();
        let seq = words.next().and_then(|s| s.parse::<u64>().ok());
        match (kind, seq) {
            (Some("ack"), Some(seq)) => self.events.push((seq, at)),
            (Some("user"), Some(seq)) => self.max_user_version = Some(seq),
            _ => {} // the test harness's own lines
        }
    }
}

fn run_and_kill(test: &str, dir: &Path, when: KillAt) -> (Acks, Instant) {
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args([test, "--exact", "--nocapture", "--test-threads=1"])
        .env(CHILD_ENV, dir)
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("spawn the child");
    let stdout = child.stdout.take().unwrap();
    let (lines_tx, lines) = mpsc::channel();
    let reader = std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            let _ = lines_tx.send((line, Instant::now()));
        }
    });
    let mut acks = Acks::default();
    match when {
        KillAt::AfterStart(delay) => std::thread::sleep(delay),
        KillAt::AfterFirstAck(delay) => {
            while acks.events.is_empty() {
                let (line, at) = lines
                    .recv_timeout(Duration::from_secs(20))
                    .expect("the child acknowledges an event");
                acks.record(&line, at);
            }
            std::thread::sleep(delay);
        }
    }
    child.kill().expect("SIGKILL the child");
    let killed = Instant::now();
    let status = child.wait().unwrap();
    assert_eq!(
        status.signal(),
        Some(9),
        "the child died before the kill: {status:?}"
    );
    reader.join().unwrap();
    for (line, at) in lines.try_iter() {
        acks.record(&line, at);
    }
    (acks, killed)
}

/// Reopens the store; checks it holds a gap-free, untorn prefix of the events
/// and a consistent user record; returns (events kept, user version).
fn reopen_and_check(config: &StoreConfig, round: usize) -> (u64, Option<u64>) {
    let store = Store::open(config.clone())
        .unwrap_or_else(|e| panic!("round {round}: the store does not reopen: {e}"));
    let events = store
        .events(USER)
        .unwrap_or_else(|e| panic!("round {round}: {e}"));
    for (seq, event) in events.iter().enumerate() {
        assert_eq!(
            event.item_id,
            item_id(seq as u64),
            "round {round}: event {seq} is wrong"
        );
    }
    let record = store.user(USER).unwrap();
    if let Some(record) = &record {
        assert_eq!(
            record.phi,
            vec![record.version as f32; 16],
            "round {round}: torn record"
        );
    }
    (events.len() as u64, record.map(|r| r.version))
}

/// Totals over all rounds, for the closing line.
#[derive(Default)]
struct Tally {
    acked: usize,
    lost: usize,
    killed_before_ack: usize,
    /// The longest a lost event had been acknowledged before the kill.
    oldest_lost: Duration,
}

fn parent(test: &str, durability: Durability, rounds: usize, window: Duration) {
    let seed = seed();
    eprintln!("{test}: seed {seed} (replay with {SEED_ENV}={seed})");
    let mut rng = Rng(seed);
    let dir = tempfile::tempdir().unwrap();
    let config = config(dir.path(), durability.clone());
    let started = Instant::now();
    let mut tally = Tally::default();
    // The highest acknowledged event / record version that must survive.
    let (mut must_have_event, mut must_have_user) = (None::<u64>, None::<u64>);
    for round in 0..rounds {
        let (acks, killed) = run_and_kill(test, dir.path(), kill_at(&mut rng, window));
        tally.acked += acks.events.len();
        tally.killed_before_ack += usize::from(acks.events.is_empty());
        let (kept, user_version) = reopen_and_check(&config, round);
        match durability {
            Durability::Immediate => {
                must_have_event = acks.events.last().map(|e| e.0).or(must_have_event);
                must_have_user = acks.max_user_version.or(must_have_user);
                if let Some(max) = must_have_user {
                    assert!(
                        user_version >= Some(max),
                        "round {round}: user version {user_version:?} < acknowledged {max}"
                    );
                }
            }
            Durability::Batched { .. } => {
                let newest_old = acks
                    .events
                    .iter()
                    .rev()
                    .find(|(_, at)| killed.duration_since(*at) >= BATCHED_SAFE_AGE);
                must_have_event = newest_old.map(|e| e.0).or(must_have_event);
            }
        }
        tally.lost += acks.events.iter().filter(|(seq, _)| *seq >= kept).count();
        let oldest_lost = acks.events.iter().find(|(seq, _)| *seq >= kept);
        if let Some((_, at)) = oldest_lost {
            tally.oldest_lost = tally.oldest_lost.max(killed.duration_since(*at));
        }
        if let Some(max) = must_have_event {
            assert!(
                kept > max,
                "round {round}: acknowledged event {max} lost ({kept} kept)"
            );
        }
    }
    eprintln!(
        "{test}: {rounds} SIGKILLs in {:.1} s, {} events acknowledged, {} acknowledged but lost \
         (the oldest acknowledged {:?} before the kill), {} rounds killed before their first ack",
        started.elapsed().as_secs_f64(),
        tally.acked,
        tally.lost,
        tally.oldest_lost,
        tally.killed_before_ack,
    );
}
