//! The mutational loop: seeds first, then mutated corpus entries for a
//! bounded time or number of runs. Each input runs under
//! `catch_unwind`; a panic (or an input slower than `slow`) stops the run
//! with the input, its panic message and how to reproduce it.
//!
//! No coverage instrumentation on the stable toolchain: an input joins the
//! corpus when the target's *outcome fingerprint* (which error, which
//! fields came out) is new, a cheap stand-in for new coverage that keeps
//! the inputs that reached a different verdict.

use std::cell::{Cell, RefCell};
use std::collections::HashSet;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::{Path, PathBuf};
use std::sync::Once;
use std::time::{Duration, Instant};

use crate::Target;
use crate::mutate::{Mutator, Rng};

/// Most corpus entries kept in memory (new ones replace random old ones).
pub const MAX_CORPUS: usize = 4096;

/// How a run is bounded and where crashes go.
#[derive(Clone, Debug)]
pub struct Options {
    /// Seed of the mutation sequence.
    pub seed: u64,
    /// Stop after this long (seeds included).
    pub time: Duration,
    /// Stop after this many executions, if set.
    pub runs: Option<u64>,
    /// An input slower than this is reported like a crash.
    pub slow: Duration,
    /// Where crashing inputs are written (created if missing).
    pub crash_dir: Option<PathBuf>,
    /// Writes every input here before running it, so an abort (stack
    /// overflow, out of memory) that `catch_unwind` cannot catch still
    /// leaves the input behind. Slow: for hunting aborts only.
    pub save_current: Option<PathBuf>,
    /// Goes on after a failure (long runs): failures are counted and the
    /// first input of each distinct panic site is kept.
    pub keep_going: bool,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            seed: 0x5EED,
            time: Duration::from_secs(5),
            runs: None,
            slow: Duration::from_secs(2),
            crash_dir: None,
            save_current: None,
            keep_going: false,
        }
    }
}

/// What failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CrashKind {
    /// The target panicked.
    Panic,
    /// The target took longer than [`Options::slow`].
    Slow,
}

/// A failing input.
#[derive(Clone, Debug)]
pub struct Crash {
    /// Panic or slow input.
    pub kind: CrashKind,
    /// The input.
    pub input: Vec<u8>,
    /// The panic message with its location (or the time taken).
    pub message: String,
    /// The backtrace, when `RUST_BACKTRACE` asks for one.
    pub backtrace: String,
    /// Which execution (1-based) of the run it was: with the same seed,
    /// `--runs` this number reproduces it.
    pub run: u64,
    /// Where it was written, if it was.
    pub path: Option<PathBuf>,
}

/// The result of a run.
#[derive(Clone, Debug)]
pub struct Report {
    /// Target name.
    pub target: &'static str,
    /// Seed used.
    pub seed: u64,
    /// Executions.
    pub execs: u64,
    /// Wall time.
    pub elapsed: Duration,
    /// Corpus entries at the end (seeds included).
    pub corpus: usize,
    /// Distinct outcome fingerprints seen.
    pub outcomes: usize,
    /// Slowest single execution.
    pub slowest: Duration,
    /// The input of the slowest execution.
    pub slowest_input: Vec<u8>,
    /// Failures: the first of each panic site (the first one ends the
    /// run unless [`Options::keep_going`]).
    pub crashes: Vec<Crash>,
    /// Failing executions in all.
    pub crash_count: u64,
}

impl Report {
    /// Executions per second.
    pub fn per_second(&self) -> f64 {
        self.execs as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }
}

thread_local! {
    /// Set while this thread runs a target: its panics are recorded here,
    /// not printed.
    static QUIET: Cell<bool> = const { Cell::new(false) };
    static CAUGHT: RefCell<Option<Panic>> = const { RefCell::new(None) };
}

/// Installs (once per process) a panic hook that records the message of
/// panics on threads running a target and leaves every other panic to the
/// previous hook: a test harness running other tests beside us still
/// prints theirs.
fn install_hook() {
    static HOOK: Once = Once::new();
    HOOK.call_once(|| {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            if QUIET.with(Cell::get) {
                let backtrace = std::backtrace::Backtrace::capture().to_string();
                let message = info.to_string();
                CAUGHT.with(|c| *c.borrow_mut() = Some(Panic { message, backtrace }));
            } else {
                previous(info);
            }
        }));
    });
}

/// A caught panic.
#[derive(Clone, Debug)]
pub struct Panic {
    /// `panicked at FILE:LINE:COL:` and the message.
    pub message: String,
    /// The backtrace, when `RUST_BACKTRACE` asks for one.
    pub backtrace: String,
}

/// Runs `target` on `data` once: the panic, if it panicked.
pub fn execute(target: &Target, data: &[u8]) -> Result<u64, Panic> {
    install_hook();
    QUIET.with(|q| q.set(true));
    let r = catch_unwind(AssertUnwindSafe(|| (target.run)(data)));
    QUIET.with(|q| q.set(false));
    r.map_err(|payload| {
        CAUGHT
            .with(|c| c.borrow_mut().take())
            .unwrap_or_else(|| Panic {
                message: payload
                    .downcast_ref::<&str>()
                    .map(|s| (*s).to_owned())
                    .or_else(|| payload.downcast_ref::<String>().cloned())
                    .unwrap_or_else(|| "panic with a non-string payload".to_owned()),
                backtrace: String::new(),
            })
    })
}

/// The seeds of a target: its built-in ones, then the files of
/// `crates/fuzz/corpus/<name>/` (when the source tree is there).
pub fn seeds(target: &Target) -> Vec<Vec<u8>> {
    let mut out = (target.seeds)();
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("corpus")
        .join(target.name);
    if let Ok(entries) = std::fs::read_dir(&dir) {
        let mut files: Vec<PathBuf> = entries.flatten().map(|e| e.path()).collect();
        files.sort();
        for f in files {
            if f.file_name().is_some_and(|n| n != "README.md")
                && let Ok(b) = std::fs::read(&f)
            {
                out.push(b);
            }
        }
    }
    out
}

/// Fuzzes `target` within `opts`' bounds.
pub fn fuzz(target: &Target, opts: &Options) -> Report {
    let start = Instant::now();
    let mut rng = Rng::new(opts.seed);
    let mutator = Mutator {
        dict: target.dict,
        max_len: target.max_len,
    };
    let mut corpus: Vec<Vec<u8>> = Vec::new();
    let mut seen: HashSet<u64> = HashSet::new();
    let mut report = Report {
        target: target.name,
        seed: opts.seed,
        execs: 0,
        elapsed: Duration::ZERO,
        corpus: 0,
        outcomes: 0,
        slowest: Duration::ZERO,
        slowest_input: Vec::new(),
        crashes: Vec::new(),
        crash_count: 0,
    };
    let mut sites: HashSet<String> = HashSet::new();
    let mut pending = seeds(target).into_iter();
    loop {
        if opts.runs.is_some_and(|n| report.execs >= n) {
            break;
        }
        // Seeds always run; mutations only within the time budget.
        let input = match pending.next() {
            Some(s) => s,
            None => {
                if start.elapsed() >= opts.time {
                    break;
                }
                let mut v = if corpus.is_empty() {
                    Vec::new()
                } else {
                    corpus[rng.below(corpus.len())].clone()
                };
                mutator.mutate(&mut rng, &mut v, &corpus);
                v
            }
        };
        if let Some(p) = &opts.save_current {
            let _ = std::fs::write(p, &input);
        }
        report.execs += 1;
        let t = Instant::now();
        let result = execute(target, &input);
        let took = t.elapsed();
        if took > report.slowest {
            report.slowest = took;
            report.slowest_input.clone_from(&input);
        }
        let (kind, panic) = match result {
            Err(p) => (CrashKind::Panic, p),
            Ok(_) if took > opts.slow => (
                CrashKind::Slow,
                Panic {
                    message: format!("one execution took {took:?} (limit {:?})", opts.slow),
                    backtrace: String::new(),
                },
            ),
            Ok(outcome) => {
                if seen.insert(outcome) {
                    if corpus.len() < MAX_CORPUS {
                        corpus.push(input);
                    } else {
                        let i = rng.below(corpus.len());
                        corpus[i] = input;
                    }
                }
                continue;
            }
        };
        report.crash_count += 1;
        let site = match kind {
            CrashKind::Panic => panic_site(&panic.message).to_owned(),
            CrashKind::Slow => "slow".to_owned(),
        };
        if sites.insert(site) && report.crashes.len() < 32 {
            let path = opts
                .crash_dir
                .as_deref()
                .and_then(|d| write_crash(d, target.name, &input));
            report.crashes.push(Crash {
                kind,
                input,
                message: panic.message,
                backtrace: panic.backtrace,
                run: report.execs,
                path,
            });
        }
        if !opts.keep_going {
            break;
        }
    }
    report.elapsed = start.elapsed();
    report.corpus = corpus.len();
    report.outcomes = seen.len();
    report
}

/// Writes a crashing input as `<dir>/<target>-<hash>.bin`.
pub fn write_crash(dir: &Path, target: &str, input: &[u8]) -> Option<PathBuf> {
    std::fs::create_dir_all(dir).ok()?;
    let path = dir.join(format!("{target}-{:016x}.bin", fnv(input)));
    std::fs::write(&path, input).ok()?;
    Some(path)
}

fn fnv(data: &[u8]) -> u64 {
    data.iter().fold(0xcbf2_9ce4_8422_2325, |h, &b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    })
}

/// The first line of a panic report, `panicked at FILE:LINE:COL:`, which
/// tells two panics apart.
pub fn panic_site(message: &str) -> &str {
    message.lines().next().unwrap_or_default()
}

/// Shrinks a panicking input while it still panics at the same place:
/// removes chunks of halving sizes, then simplifies bytes. Returns the
/// input unchanged if it does not panic.
pub fn minimize(target: &Target, input: &[u8]) -> Vec<u8> {
    let Err(first) = execute(target, input) else {
        return input.to_vec();
    };
    let site = panic_site(&first.message).to_owned();
    let still = |v: &[u8]| matches!(execute(target, v), Err(p) if panic_site(&p.message) == site);
    let mut best = input.to_vec();
    let mut chunk = best.len().next_power_of_two();
    while chunk >= 1 {
        let mut i = 0;
        while i < best.len() {
            let end = (i + chunk).min(best.len());
            let mut candidate = best[..i].to_vec();
            candidate.extend_from_slice(&best[end..]);
            if still(&candidate) {
                best = candidate;
            } else {
                i += chunk;
            }
        }
        chunk /= 2;
    }
    // Make what is left readable: bytes become 'a' where that still fails.
    for i in 0..best.len() {
        if best[i] != b'a' && !best[i].is_ascii_punctuation() && !best[i].is_ascii_whitespace() {
            let mut candidate = best.clone();
            candidate[i] = b'a';
            if still(&candidate) {
                best = candidate;
            }
        }
    }
    best
}

/// Lower-case hex of an input (how failures are printed).
pub fn hex(data: &[u8]) -> String {
    data.iter().map(|b| format!("{b:02x}")).collect()
}

/// How a failing input is shown: all of it up to 2 KiB, else its start
/// (the file holds all of it).
pub fn show(data: &[u8]) -> String {
    const MAX: usize = 2048;
    if data.len() <= MAX {
        format!(
            "input {:?}\nhex {}",
            String::from_utf8_lossy(data),
            hex(data)
        )
    } else {
        format!(
            "input ({} bytes, the first {MAX}) {:?}\nhex (first {MAX} bytes) {}",
            data.len(),
            String::from_utf8_lossy(&data[..MAX]),
            hex(&data[..MAX])
        )
    }
}

/// Parses the output of [`hex`] back.
pub fn unhex(s: &str) -> Option<Vec<u8>> {
    let s = s.trim();
    if !s.len().is_multiple_of(2) {
        return None;
    }
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(s.get(i..i + 2)?, 16).ok())
        .collect()
}
