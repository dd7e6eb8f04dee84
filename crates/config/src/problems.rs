//! Problems found while validating, each with its key path, and the checks
//! of single values that every section uses.

use super::*;

pub(super) struct Problems(pub(super) Vec<Problem>);

impl Problems {
    pub(super) fn add(&mut self, path: impl Into<String>, message: impl Into<String>) {
        self.0.push(Problem {
            path: path.into(),
            message: message.into(),
        });
    }
}

/// A file named at `path` (required or not) that can be opened for
/// reading; a problem otherwise. Only the name is reported, never content.
pub(super) fn readable_file(
    p: &mut Problems,
    path: &str,
    file: Option<&str>,
    required: bool,
) -> Option<PathBuf> {
    let Some(file) = file else {
        if required {
            p.add(path, "required");
        }
        return None;
    };
    match std::fs::File::open(file) {
        Ok(_) => Some(PathBuf::from(file)),
        Err(e) => {
            p.add(path, format!("cannot read {file:?}: {e}"));
            None
        }
    }
}

pub(super) fn nonzero(p: &mut Problems, path: &str, v: u64) {
    if v == 0 {
        p.add(path, "must be greater than 0");
    }
}

pub(super) fn hex_of_len(s: &str, len: usize) -> bool {
    s.len() == len && s.bytes().all(|b| b.is_ascii_hexdigit())
}

/// Arrays and inline tables nested deeper than this are refused before
/// parsing: the TOML parser recurses once per level, and a file of a few
/// kilobytes of `[[[[…` would overflow the stack (found by the fuzz
/// target `config`); no configuration nests more than a handful.
pub(super) const MAX_NESTING: usize = 32;

/// `Err` when `text` nests arrays or inline tables deeper than
/// [`MAX_NESTING`] (brackets inside strings and comments do not count).
pub(super) fn nesting_within(text: &str, name: &str) -> Result<(), ConfigError> {
    let (mut depth, mut max) = (0usize, 0usize);
    let mut quote: Option<u8> = None;
    let mut escaped = false;
    let mut comment = false;
    for &b in text.as_bytes() {
        if comment {
            comment = b != b'\n';
            continue;
        }
        match quote {
            Some(q) => {
                if escaped {
                    escaped = false;
                } else if b == b'\\' && q == b'"' {
                    escaped = true;
                } else if b == q {
                    quote = None;
                }
            }
            None => match b {
                b'"' | b'\'' => quote = Some(b),
                b'#' => comment = true,
                b'[' | b'{' => {
                    depth += 1;
                    max = max.max(depth);
                }
                b']' | b'}' => depth = depth.saturating_sub(1),
                _ => {}
            },
        }
    }
    if max > MAX_NESTING {
        let at = if name.is_empty() {
            String::new()
        } else {
            format!("{name}: ")
        };
        return Err(ConfigError::Syntax(format!(
            "{at}arrays or tables nested more than {MAX_NESTING} deep"
        )));
    }
    Ok(())
}

pub(super) fn is_keyword(s: &str) -> bool {
    matches!(s, "lang" | "site" | "tenant" | "queue" | "true")
}

pub(super) fn valid_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 64
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-'))
}

/// What sections look each other up by, collected before any section is
/// validated: tenants, the catalog of skills, languages, sites and
/// queues, and the queues' names.
pub(crate) struct Names<'a> {
    pub(crate) tenants: &'a [String],
    pub(crate) catalog: &'a Catalog,
    pub(crate) queue_names: &'a [String],
}

impl Names<'_> {
    /// The index of tenant `name`, or a problem at `path` (and 0).
    pub(crate) fn tenant_of(&self, p: &mut Problems, path: String, name: &str) -> TenantId {
        TenantId::at(
            self.tenants
                .iter()
                .position(|t| t == name)
                .unwrap_or_else(|| {
                    p.add(path, format!("unknown tenant {name:?}"));
                    0
                }),
        )
    }

    /// A requirement expression resolved against the catalog, or a
    /// problem at `path`.
    pub(crate) fn requirement(
        &self,
        p: &mut Problems,
        path: String,
        text: &str,
    ) -> Option<Requirement> {
        match Requirement::parse(text, self.catalog) {
            Ok(r) => Some(r),
            Err(e) => {
                p.add(path, e.to_string());
                None
            }
        }
    }
}
