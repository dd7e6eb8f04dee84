//! `centralino audit`: checks a store's audit log against its key.

use std::path::PathBuf;
use std::process::ExitCode;

/// `centralino audit`'s options.
pub(crate) struct AuditArgs {
    pub(crate) data_dir: PathBuf,
    pub(crate) tail: Option<usize>,
    pub(crate) key_file: Option<PathBuf>,
    pub(crate) config: Option<PathBuf>,
    pub(crate) expect_head: Vec<centralino_store::AuditHead>,
    /// `--number`: print its tag.
    pub(crate) number: Option<String>,
}

/// The key the node signs with: `key_file`, else the configuration's
/// `store.audit_key_file`, else the one the node created beside the
/// database.
pub(crate) fn node_key(
    data_dir: &std::path::Path,
    key_file: Option<PathBuf>,
    config: Option<PathBuf>,
) -> Result<centralino_store::AuditKey, String> {
    let key_file = match (key_file, config) {
        (Some(file), _) => file,
        (None, Some(config)) => crate::load(Some(config))
            .map_err(|e| format!("{e:#}"))?
            .audit_key_file
            .unwrap_or_else(|| data_dir.join(centralino_store::AUDIT_KEY_FILE)),
        (None, None) => data_dir.join(centralino_store::AUDIT_KEY_FILE),
    };
    centralino_store::AuditKey::from_file(&key_file)
        .map_err(|e| format!("{e} (give the node's key with --key-file or --config)"))
}

/// `centralino audit`: 0 intact, 1 broken (or a head missing), 2 cannot
/// read.
pub(crate) fn audit(args: AuditArgs) -> ExitCode {
    use centralino_store::{AuditBroken, HeadCheck};
    let path = args.data_dir.join("centralino.db");
    if !path.is_file() {
        eprintln!("centralino: no store at {}", path.display());
        return ExitCode::from(2);
    }
    let key = match node_key(&args.data_dir, args.key_file, args.config) {
        Ok(k) => k,
        Err(e) => {
            eprintln!("centralino: {e}");
            return ExitCode::from(2);
        }
    };
    if let Some(number) = &args.number {
        // What the log holds for it (a do-not-call removal's target).
        println!("{}", key.number_tag(number));
    }
    // Without the key: this check never changes the file (a wrong key
    // given here must not seal anything).
    let store = match centralino_store::Store::open(&path) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("centralino: {}: {e}", path.display());
            return ExitCode::from(2);
        }
    };
    if let Some(n) = args.tail {
        match store.audit_tail(n) {
            Ok(entries) => {
                for e in entries {
                    println!(
                        "{}\t{}\t{}\t{}\t{}",
                        e.at, e.actor, e.action, e.target, e.status
                    );
                }
            }
            Err(e) => {
                eprintln!("centralino: {e}");
                return ExitCode::from(2);
            }
        }
    }
    let chain = match store.verify_audit(&key) {
        Ok(Ok(chain)) => chain,
        Ok(Err(AuditBroken::Entry(seq))) => {
            println!(
                "audit log BROKEN at entry {seq}: edited, removed or forged from there on (or signed with another key)"
            );
            return ExitCode::FAILURE;
        }
        Ok(Err(AuditBroken::Boundary)) => {
            println!(
                "audit log BROKEN: where keyed entries begin does not verify with this key (the wrong key, or the log was rewritten)"
            );
            return ExitCode::FAILURE;
        }
        Err(e) => {
            eprintln!("centralino: {e}");
            return ExitCode::from(2);
        }
    };
    for head in &args.expect_head {
        match store.check_head(head) {
            Ok(HeadCheck::Found) => {}
            Ok(HeadCheck::Cut { last }) => {
                println!(
                    "audit log CUT: the node logged entry {} and the log ends at entry {last}: entries removed from the end",
                    head.seq
                );
                return ExitCode::FAILURE;
            }
            Ok(HeadCheck::Replaced) => {
                println!(
                    "audit log CUT: entry {} is not the one the node logged: entries removed from the end, then written on",
                    head.seq
                );
                return ExitCode::FAILURE;
            }
            Err(e) => {
                eprintln!("centralino: {e}");
                return ExitCode::from(2);
            }
        }
    }
    let mut line = format!("audit log intact: {} entries", chain.entries);
    if let Some(head) = &chain.head {
        line += &format!(", head {head}");
    }
    if chain.unkeyed > 0 {
        line += &format!(
            " ({} written before keyed audit: SHA-256, sealed with the key at the upgrade)",
            chain.unkeyed
        );
    }
    if !args.expect_head.is_empty() {
        line += &format!("; {} logged head(s) found", args.expect_head.len());
    }
    println!("{line}");
    ExitCode::SUCCESS
}
