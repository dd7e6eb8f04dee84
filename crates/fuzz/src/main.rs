//! `fuzz`: runs fuzz targets for a while and says how it went.
//!
//! ```text
//! fuzz TARGET|all [--seconds N] [--runs N] [--seed N] [--crash-dir DIR]
//!                 [--slow-ms N] [--save-current FILE] [--keep-going]
//!                 [--backtrace]
//! fuzz --replay TARGET FILE...     run saved inputs (a panic shows its message)
//! fuzz --minimize TARGET FILE      shrink a crashing input (written to FILE.min)
//! fuzz --write-seeds DIR           every target's seeds as DIR/TARGET/N
//!                                  (a starting corpus for `cargo fuzz`)
//! fuzz --list                      the targets
//! ```
//!
//! Build it optimised with the checks of a debug build
//! (`--profile fuzz`, see the workspace manifest), one target at a time.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use centralino_fuzz::runner::{self, Options};
use centralino_fuzz::{TARGETS, Target, target};

fn usage() -> ExitCode {
    eprintln!(
        "usage: fuzz TARGET|all [--seconds N] [--runs N] [--seed N] [--crash-dir DIR] [--slow-ms N] [--save-current FILE] [--keep-going] [--backtrace]\n       fuzz --replay TARGET FILE...\n       fuzz --minimize TARGET FILE\n       fuzz --write-seeds DIR\n       fuzz --list\ntargets: {}",
        TARGETS
            .iter()
            .map(|t| t.name)
            .collect::<Vec<_>>()
            .join(", ")
    );
    ExitCode::from(2)
}

fn random_seed() -> u64 {
    use std::hash::{BuildHasher, RandomState};
    RandomState::new().hash_one(std::time::SystemTime::now())
}

fn replay(t: &Target, files: &[String]) -> ExitCode {
    let mut failed = false;
    for f in files {
        let Ok(data) = std::fs::read(f) else {
            eprintln!("{f}: cannot read");
            return ExitCode::from(2);
        };
        match runner::execute(t, &data) {
            Ok(_) => println!("{f}: ok"),
            Err(p) => {
                failed = true;
                println!("{f}: PANIC\n{}\n{}", p.message, p.backtrace);
            }
        }
    }
    if failed {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}

fn minimize(t: &Target, file: &str) -> ExitCode {
    let Ok(data) = std::fs::read(file) else {
        eprintln!("{file}: cannot read");
        return ExitCode::from(2);
    };
    if runner::execute(t, &data).is_ok() {
        println!("{file}: does not panic");
        return ExitCode::FAILURE;
    }
    let small = runner::minimize(t, &data);
    let out = format!("{file}.min");
    if std::fs::write(&out, &small).is_err() {
        eprintln!("{out}: cannot write");
        return ExitCode::from(2);
    }
    println!(
        "{} -> {} bytes: {out}\n{:?}\nhex {}",
        data.len(),
        small.len(),
        String::from_utf8_lossy(&small),
        runner::hex(&small)
    );
    if let Err(p) = runner::execute(t, &small) {
        println!("{}", p.message);
    }
    ExitCode::SUCCESS
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let Some(first) = args.first() else {
        return usage();
    };
    match first.as_str() {
        "--list" => {
            for t in TARGETS {
                println!("{}", t.name);
            }
            return ExitCode::SUCCESS;
        }
        "--write-seeds" => {
            let Some(dir) = args.get(1) else {
                return usage();
            };
            for t in TARGETS {
                let d = std::path::Path::new(dir).join(t.name);
                let seeds = runner::seeds(t);
                let written = std::fs::create_dir_all(&d).is_ok()
                    && seeds
                        .iter()
                        .enumerate()
                        .all(|(i, s)| std::fs::write(d.join(format!("seed-{i:04}")), s).is_ok());
                if !written {
                    eprintln!("{}: cannot write", d.display());
                    return ExitCode::from(2);
                }
                println!("{}: {} seeds", d.display(), seeds.len());
            }
            return ExitCode::SUCCESS;
        }
        "--replay" | "--minimize" => {
            let Some(t) = args.get(1).and_then(|n| target(n)) else {
                return usage();
            };
            if args.len() < 3 {
                return usage();
            }
            return if first == "--replay" {
                replay(t, &args[2..])
            } else {
                minimize(t, &args[2])
            };
        }
        _ => {}
    }
    let chosen: Vec<&Target> = if first == "all" {
        TARGETS.iter().collect()
    } else if let Some(t) = target(first) {
        vec![t]
    } else {
        return usage();
    };
    let mut opts = Options {
        seed: random_seed(),
        time: Duration::from_secs(60),
        crash_dir: Some(PathBuf::from("fuzz-crashes")),
        ..Options::default()
    };
    let mut seconds_given = false;
    let mut backtrace = false;
    let mut it = args[1..].iter();
    while let Some(flag) = it.next() {
        match flag.as_str() {
            "--keep-going" => {
                opts.keep_going = true;
                continue;
            }
            "--backtrace" => {
                backtrace = true;
                continue;
            }
            _ => {}
        }
        let Some(value) = it.next() else {
            return usage();
        };
        let num = || value.parse::<u64>().ok();
        match (flag.as_str(), num()) {
            ("--seconds", Some(n)) => {
                opts.time = Duration::from_secs(n);
                seconds_given = true;
            }
            ("--runs", Some(n)) => opts.runs = Some(n),
            ("--seed", Some(n)) => opts.seed = n,
            ("--slow-ms", Some(n)) => opts.slow = Duration::from_millis(n),
            ("--crash-dir", _) => opts.crash_dir = Some(PathBuf::from(value)),
            ("--save-current", _) => opts.save_current = Some(PathBuf::from(value)),
            _ => return usage(),
        }
    }
    if opts.runs.is_some() && !seconds_given {
        // A reproduction: as many runs as asked, however long they take.
        opts.time = Duration::MAX;
    }
    let mut crashed = false;
    for t in chosen {
        let r = runner::fuzz(t, &opts);
        println!(
            "{:<12} seed {:<20} {:>11} execs in {:>7.1} s = {:>9.0}/s  corpus {:>5}  outcomes {:>5}  slowest {:>9.3?}  crashes {}",
            r.target,
            r.seed,
            r.execs,
            r.elapsed.as_secs_f64(),
            r.per_second(),
            r.corpus,
            r.outcomes,
            r.slowest,
            r.crash_count,
        );
        if let Some(dir) = &opts.crash_dir
            && std::fs::create_dir_all(dir).is_ok()
        {
            // For a look at what costs most (not a failure).
            let _ = std::fs::write(
                dir.join(format!("{}-slowest.bin", r.target)),
                &r.slowest_input,
            );
        }
        for c in &r.crashes {
            crashed = true;
            println!(
                "CRASH ({:?}) in {} at execution {} (seed {}): {}{}\n{}\nreproduce: fuzz {} --seed {} --runs {}{}",
                c.kind,
                r.target,
                c.run,
                r.seed,
                c.message,
                if backtrace { &c.backtrace } else { "" },
                runner::show(&c.input),
                r.target,
                r.seed,
                c.run,
                c.path
                    .as_ref()
                    .map(|p| format!("   or: fuzz --replay {} {}", r.target, p.display()))
                    .unwrap_or_default(),
            );
        }
    }
    if crashed {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}
