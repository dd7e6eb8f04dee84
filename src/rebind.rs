//! `centralino rebind-queue`: moves a queue's name to another firm in a
//! stopped node's store, on purpose (see `queue_owners.rs` in the store).

use std::path::PathBuf;
use std::process::ExitCode;

/// `centralino rebind-queue`'s options.
pub(crate) struct RebindArgs {
    pub(crate) data_dir: PathBuf,
    pub(crate) queue: String,
    pub(crate) tenant: String,
    pub(crate) with_history: bool,
    pub(crate) key_file: Option<PathBuf>,
    pub(crate) config: PathBuf,
}

/// 0 moved (or already there), 1 refused, 2 cannot act (no store, no
/// key, the node running, a queue the store never saw).
pub(crate) fn rebind(args: RebindArgs) -> ExitCode {
    let fail = |code: u8, e: &dyn std::fmt::Display| {
        eprintln!("centralino: {e}");
        ExitCode::from(code)
    };
    let path = args.data_dir.join("centralino.db");
    if !path.is_file() {
        return fail(2, &format!("no store at {}", path.display()));
    }
    if args.tenant.is_empty() || args.queue.is_empty() {
        return fail(2, &"--queue and --tenant must name something");
    }
    // The next start must agree, or it is refused all the same; and a
    // firm's name mistyped here would bind the queue to nobody.
    let config = match crate::load(Some(args.config.clone())) {
        Ok(c) => c,
        Err(e) => return fail(2, &format!("{e:#}")),
    };
    let gives = config
        .queues
        .iter()
        .find(|q| q.routing.name == args.queue)
        .and_then(|q| config.tenants.get(q.tenant.index()));
    if gives != Some(&args.tenant) {
        let why = match gives {
            Some(t) => format!("gives queue {:?} to tenant {t:?}", args.queue),
            None => format!("has no queue {:?}", args.queue),
        };
        return fail(
            1,
            &format!(
                "{} {why}: the configuration the node will start with must give it to {:?}",
                args.config.display(),
                args.tenant
            ),
        );
    }
    // A node serving from the directory would go on filling the queue as
    // the old firm's.
    let _lock = match centralino_store::lock_data_dir(&args.data_dir) {
        Ok(l) => l,
        Err(e) => return fail(2, &e),
    };
    let key = match crate::audit::node_key(&args.data_dir, args.key_file, Some(args.config)) {
        Ok(k) => k,
        Err(e) => return fail(2, &e),
    };
    let mut store = match centralino_store::Store::open_keyed(&path, key) {
        Ok(s) => s,
        Err(e) => return fail(2, &format!("{}: {e}", path.display())),
    };
    // An entry signed with another key than the log's would break the
    // chain for `centralino audit` from there on.
    match store.audit_key_fits() {
        Ok(true) => {}
        Ok(false) => {
            return fail(
                2,
                &"the audit key does not fit this store's audit log: give the node's key with --key-file",
            );
        }
        Err(e) => return fail(2, &e),
    }
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64);
    let actor = format!("cli:{}", std::env::var("USER").unwrap_or_default());
    let was = match store.rebind_queue(&args.queue, &args.tenant, args.with_history, &actor, now) {
        Ok(was) => was,
        Err(
            e @ (centralino_store::RebindError::Store(_)
            | centralino_store::RebindError::Unknown(_)),
        ) => return fail(2, &e),
        Err(e) => return fail(1, &e),
    };
    if was.as_deref() == Some(args.tenant.as_str()) {
        println!(
            "queue {:?} already belongs to tenant {:?}",
            args.queue, args.tenant
        );
        return ExitCode::SUCCESS;
    }
    let from = was.map_or_else(|| "an unknown firm".to_owned(), |w| format!("tenant {w:?}"));
    println!(
        "queue {:?} moved from {from} to {:?}: start the node with a configuration that gives it to {:?}",
        args.queue, args.tenant, args.tenant
    );
    ExitCode::SUCCESS
}
