//! Requirement expressions: which operators may take a call.
//!
//! Grammar (whitespace between tokens is free):
//!
//! ```text
//! expr   := and ( "||" and )*
//! and    := unary ( "&&" unary )*
//! unary  := "!" unary | "(" expr ")" | atom
//! atom   := "true"
//!         | SKILL [ ("==" | "!=" | ">=" | "<=" | ">" | "<") LEVEL ]
//!         | ("lang" | "site" | "tenant" | "queue") ("==" | "!=") "\"" NAME "\""
//! ```
//!
//! `SKILL` alone means level ≥ 1; an operator without the skill has level 0.
//! `lang == "it"` holds when the operator speaks Italian; `queue == "info"`
//! when the operator lists the queue. Names are resolved against a
//! [`Catalog`] when parsed, so an unknown skill, language, site, tenant or
//! queue is an error at load time, never a call that waits for nobody.

use std::collections::HashMap;
use std::fmt;

/// Longest expression accepted (characters).
pub const MAX_EXPR_LEN: usize = 1024;
/// Deepest nesting accepted.
pub const MAX_DEPTH: usize = 32;
/// Most distinct languages (they are a bitset).
pub const MAX_LANGUAGES: usize = 64;
/// Highest proficiency level.
pub const MAX_LEVEL: u8 = 10;

/// Names known to the router, each with a dense index.
#[derive(Clone, Debug, Default)]
pub struct Catalog {
    skills: HashMap<String, u16>,
    languages: HashMap<String, u8>,
    sites: HashMap<String, u16>,
    tenants: HashMap<String, u16>,
    queues: HashMap<String, u32>,
}

/// A name the catalog cannot take.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum CatalogError {
    /// More than [`MAX_LANGUAGES`] languages.
    #[error("more than {MAX_LANGUAGES} languages")]
    TooManyLanguages,
    /// More than 65,535 skills, sites or tenants.
    #[error("too many distinct names")]
    TooMany,
}

macro_rules! intern {
    ($fn:ident, $get:ident, $field:ident, $t:ty, $max:expr, $err:expr) => {
        /// Adds a name (idempotent) and returns its index.
        pub fn $fn(&mut self, name: &str) -> Result<$t, CatalogError> {
            if let Some(&i) = self.$field.get(name) {
                return Ok(i);
            }
            let i = self.$field.len();
            if i >= $max {
                return Err($err);
            }
            self.$field.insert(name.to_owned(), i as $t);
            Ok(i as $t)
        }

        /// The index of a known name.
        pub fn $get(&self, name: &str) -> Option<$t> {
            self.$field.get(name).copied()
        }
    };
}

impl Catalog {
    /// Whether every name of `old` keeps its index here (names may have
    /// been added): what was resolved against `old` still means the same.
    pub fn extends(&self, old: &Self) -> bool {
        fn keeps<T: PartialEq>(new: &HashMap<String, T>, old: &HashMap<String, T>) -> bool {
            old.iter().all(|(k, v)| new.get(k) == Some(v))
        }
        keeps(&self.skills, &old.skills)
            && keeps(&self.languages, &old.languages)
            && keeps(&self.sites, &old.sites)
            && keeps(&self.tenants, &old.tenants)
            && keeps(&self.queues, &old.queues)
    }

    intern!(
        skill,
        skill_id,
        skills,
        u16,
        usize::from(u16::MAX),
        CatalogError::TooMany
    );
    intern!(
        language,
        language_id,
        languages,
        u8,
        MAX_LANGUAGES,
        CatalogError::TooManyLanguages
    );
    intern!(
        site,
        site_id,
        sites,
        u16,
        usize::from(u16::MAX),
        CatalogError::TooMany
    );
    intern!(
        tenant,
        tenant_id,
        tenants,
        u16,
        usize::from(u16::MAX),
        CatalogError::TooMany
    );
    intern!(
        queue,
        queue_id,
        queues,
        u32,
        u32::MAX as usize,
        CatalogError::TooMany
    );
}

/// What an expression is evaluated against: an operator's attributes.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Attributes {
    /// Tenant index.
    pub tenant: u16,
    /// Site index.
    pub site: u16,
    /// Skills (index, level 1..=10), sorted by index, no duplicates.
    pub skills: Vec<(u16, u8)>,
    /// Languages spoken, one bit per catalog language.
    pub languages: u64,
    /// Queues listed by the operator, sorted.
    pub queues: Vec<u32>,
}

impl Attributes {
    /// Level of a skill, 0 when absent.
    pub fn level(&self, skill: u16) -> u8 {
        self.skills
            .binary_search_by_key(&skill, |&(s, _)| s)
            .map_or(0, |i| self.skills[i].1)
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Cmp {
    Eq,
    Ne,
    Ge,
    Le,
    Gt,
    Lt,
}

impl Cmp {
    fn holds(self, a: u8, b: u8) -> bool {
        match self {
            Self::Eq => a == b,
            Self::Ne => a != b,
            Self::Ge => a >= b,
            Self::Le => a <= b,
            Self::Gt => a > b,
            Self::Lt => a < b,
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum Node {
    True,
    Skill(u16, Cmp, u8),
    Lang(u8, bool),
    Site(u16, bool),
    Tenant(u16, bool),
    Queue(u32, bool),
    Not(Box<Self>),
    And(Box<Self>, Box<Self>),
    Or(Box<Self>, Box<Self>),
}

impl Node {
    fn eval(&self, a: &Attributes) -> bool {
        match self {
            Self::True => true,
            Self::Skill(s, c, l) => c.holds(a.level(*s), *l),
            Self::Lang(l, eq) => (a.languages >> l & 1 == 1) == *eq,
            Self::Site(s, eq) => (a.site == *s) == *eq,
            Self::Tenant(t, eq) => (a.tenant == *t) == *eq,
            Self::Queue(q, eq) => a.queues.binary_search(q).is_ok() == *eq,
            Self::Not(n) => !n.eval(a),
            Self::And(x, y) => x.eval(a) && y.eval(a),
            Self::Or(x, y) => x.eval(a) || y.eval(a),
        }
    }

    /// The first skill compared, for the most-proficient strategy.
    fn first_skill(&self) -> Option<u16> {
        match self {
            Self::Skill(s, ..) => Some(*s),
            Self::And(x, y) | Self::Or(x, y) => x.first_skill().or_else(|| y.first_skill()),
            _ => None,
        }
    }

    fn mentions_tenant(&self) -> bool {
        match self {
            Self::Tenant(..) => true,
            Self::Not(n) => n.mentions_tenant(),
            Self::And(x, y) | Self::Or(x, y) => x.mentions_tenant() || y.mentions_tenant(),
            _ => false,
        }
    }
}

/// A parsed, resolved requirement expression.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Requirement {
    text: String,
    root: Node,
}

impl Requirement {
    /// Matches every operator.
    pub fn any() -> Self {
        Self {
            text: "true".into(),
            root: Node::True,
        }
    }

    /// Operators that list queue `q` (a queue's default requirement).
    pub fn member_of(q: u32, name: &str) -> Self {
        Self {
            text: format!("queue == \"{name}\""),
            root: Node::Queue(q, true),
        }
    }

    /// Both.
    pub fn and(&self, other: &Self) -> Self {
        if matches!(other.root, Node::True) {
            return self.clone();
        }
        if matches!(self.root, Node::True) {
            return other.clone();
        }
        Self {
            text: format!("({}) && ({})", self.text, other.text),
            root: Node::And(Box::new(self.root.clone()), Box::new(other.root.clone())),
        }
    }

    /// Restricts to one of these tenants, unless the expression already
    /// names a tenant itself.
    pub fn within_tenants(&self, tenants: &[u16]) -> Self {
        if self.root.mentions_tenant() || tenants.is_empty() {
            return self.clone();
        }
        let mut any: Option<Node> = None;
        for &t in tenants {
            let n = Node::Tenant(t, true);
            any = Some(match any {
                None => n,
                Some(prev) => Node::Or(Box::new(prev), Box::new(n)),
            });
        }
        let Some(any) = any else {
            return self.clone();
        };
        Self {
            text: self.text.clone(),
            root: Node::And(Box::new(self.root.clone()), Box::new(any)),
        }
    }

    /// Whether the expression names tenants itself (then
    /// [`Self::within_tenants`] leaves it as it is).
    pub fn names_tenants(&self) -> bool {
        self.root.mentions_tenant()
    }

    /// Whether an operator with these attributes qualifies.
    pub fn matches(&self, a: &Attributes) -> bool {
        self.root.eval(a)
    }

    /// The first skill the expression compares (the queue's main skill).
    pub fn primary_skill(&self) -> Option<u16> {
        self.root.first_skill()
    }

    /// The source text.
    pub fn as_str(&self) -> &str {
        &self.text
    }

    /// Parses and resolves `text` against `catalog`.
    pub fn parse(text: &str, catalog: &Catalog) -> Result<Self, ExprError> {
        if text.len() > MAX_EXPR_LEN {
            return Err(ExprError::new(
                0,
                format!("longer than {MAX_EXPR_LEN} bytes"),
            ));
        }
        let mut p = Parser {
            s: text.as_bytes(),
            i: 0,
            depth: 0,
            catalog,
        };
        let root = p.expr()?;
        p.ws();
        if p.i < p.s.len() {
            return Err(p.err("unexpected input after the expression"));
        }
        Ok(Self {
            text: text.trim().to_owned(),
            root,
        })
    }
}

impl fmt::Display for Requirement {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

/// Why an expression was refused, with the byte offset.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("at byte {at}: {message}")]
pub struct ExprError {
    /// Byte offset into the expression.
    pub at: usize,
    /// What is wrong.
    pub message: String,
}

impl ExprError {
    fn new(at: usize, message: String) -> Self {
        Self { at, message }
    }
}

struct Parser<'a> {
    s: &'a [u8],
    i: usize,
    depth: usize,
    catalog: &'a Catalog,
}

impl Parser<'_> {
    fn err(&self, m: impl Into<String>) -> ExprError {
        ExprError::new(self.i, m.into())
    }

    fn ws(&mut self) {
        while self.i < self.s.len() && self.s[self.i].is_ascii_whitespace() {
            self.i += 1;
        }
    }

    fn eat(&mut self, tok: &str) -> bool {
        self.ws();
        if self.s[self.i..].starts_with(tok.as_bytes()) {
            self.i += tok.len();
            true
        } else {
            false
        }
    }

    fn expr(&mut self) -> Result<Node, ExprError> {
        self.depth += 1;
        if self.depth > MAX_DEPTH {
            return Err(self.err(format!("nested deeper than {MAX_DEPTH}")));
        }
        let mut left = self.and()?;
        while self.eat("||") {
            let right = self.and()?;
            left = Node::Or(Box::new(left), Box::new(right));
        }
        self.depth -= 1;
        Ok(left)
    }

    fn and(&mut self) -> Result<Node, ExprError> {
        let mut left = self.unary()?;
        while self.eat("&&") {
            let right = self.unary()?;
            left = Node::And(Box::new(left), Box::new(right));
        }
        Ok(left)
    }

    fn unary(&mut self) -> Result<Node, ExprError> {
        self.ws();
        if self.s[self.i..].starts_with(b"!=") {
            return Err(self.err("expected a skill or a condition"));
        }
        if self.eat("!") {
            self.depth += 1;
            if self.depth > MAX_DEPTH {
                return Err(self.err(format!("nested deeper than {MAX_DEPTH}")));
            }
            let n = self.unary()?;
            self.depth -= 1;
            return Ok(Node::Not(Box::new(n)));
        }
        if self.eat("(") {
            let n = self.expr()?;
            if !self.eat(")") {
                return Err(self.err("expected )"));
            }
            return Ok(n);
        }
        self.atom()
    }

    fn ident(&mut self) -> Option<&str> {
        self.ws();
        let start = self.i;
        while self.i < self.s.len()
            && (self.s[self.i].is_ascii_alphanumeric() || matches!(self.s[self.i], b'_' | b'-'))
        {
            self.i += 1;
        }
        // ASCII only by construction.
        std::str::from_utf8(&self.s[start..self.i])
            .ok()
            .filter(|s| !s.is_empty())
    }

    fn cmp(&mut self) -> Option<Cmp> {
        for (t, c) in [
            ("==", Cmp::Eq),
            ("!=", Cmp::Ne),
            (">=", Cmp::Ge),
            ("<=", Cmp::Le),
            (">", Cmp::Gt),
            ("<", Cmp::Lt),
        ] {
            if self.eat(t) {
                return Some(c);
            }
        }
        None
    }

    fn string(&mut self) -> Result<String, ExprError> {
        self.ws();
        if !self.eat("\"") {
            return Err(self.err("expected a quoted name"));
        }
        let start = self.i;
        while self.i < self.s.len() && self.s[self.i] != b'"' {
            if !(self.s[self.i].is_ascii_alphanumeric() || matches!(self.s[self.i], b'_' | b'-')) {
                return Err(self.err("names are [A-Za-z0-9_-]"));
            }
            self.i += 1;
        }
        if self.i >= self.s.len() {
            return Err(self.err("unterminated string"));
        }
        let name = String::from_utf8_lossy(&self.s[start..self.i]).into_owned();
        self.i += 1;
        Ok(name)
    }

    fn atom(&mut self) -> Result<Node, ExprError> {
        let at = self.i;
        let Some(word) = self.ident().map(str::to_owned) else {
            return Err(self.err("expected a skill or a condition"));
        };
        match word.as_str() {
            "true" => Ok(Node::True),
            "lang" | "site" | "tenant" | "queue" => {
                let eq = match self.cmp() {
                    Some(Cmp::Eq) => true,
                    Some(Cmp::Ne) => false,
                    _ => return Err(self.err(format!("{word} takes == or !="))),
                };
                let name = self.string()?;
                let unknown = |kind: &str| ExprError::new(at, format!("unknown {kind} {name:?}"));
                let c = self.catalog;
                Ok(match word.as_str() {
                    "lang" => {
                        Node::Lang(c.language_id(&name).ok_or_else(|| unknown("language"))?, eq)
                    }
                    "site" => Node::Site(c.site_id(&name).ok_or_else(|| unknown("site"))?, eq),
                    "tenant" => {
                        Node::Tenant(c.tenant_id(&name).ok_or_else(|| unknown("tenant"))?, eq)
                    }
                    _ => Node::Queue(c.queue_id(&name).ok_or_else(|| unknown("queue"))?, eq),
                })
            }
            skill => {
                let Some(id) = self.catalog.skill_id(skill) else {
                    return Err(ExprError::new(
                        at,
                        format!("unknown skill {skill:?} (no operator has it)"),
                    ));
                };
                let Some(c) = self.cmp() else {
                    return Ok(Node::Skill(id, Cmp::Ge, 1));
                };
                self.ws();
                let start = self.i;
                while self.i < self.s.len() && self.s[self.i].is_ascii_digit() {
                    self.i += 1;
                }
                let level = std::str::from_utf8(&self.s[start..self.i])
                    .ok()
                    .and_then(|d| d.parse::<u8>().ok())
                    .filter(|&l| l <= MAX_LEVEL)
                    .ok_or_else(|| self.err(format!("expected a level 0..={MAX_LEVEL}")))?;
                Ok(Node::Skill(id, c, level))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn catalog() -> Catalog {
        let mut c = Catalog::default();
        c.skill("vaccini").unwrap();
        c.skill("triage").unwrap();
        c.language("it").unwrap();
        c.language("en").unwrap();
        c.site("roma").unwrap();
        c.tenant("asl").unwrap();
        c.queue("info").unwrap();
        c
    }

    fn agent(c: &Catalog, skills: &[(&str, u8)], langs: &[&str]) -> Attributes {
        let mut skills: Vec<(u16, u8)> = skills
            .iter()
            .map(|(s, l)| (c.skill_id(s).unwrap(), *l))
            .collect();
        skills.sort_unstable();
        Attributes {
            tenant: 0,
            site: 0,
            skills,
            languages: langs
                .iter()
                .map(|l| 1u64 << c.language_id(l).unwrap())
                .sum(),
            queues: vec![0],
        }
    }

    #[test]
    fn evaluates_the_issue_example() {
        let c = catalog();
        let r = Requirement::parse(r#"vaccini >= 5 && lang == "it""#, &c).unwrap();
        assert!(r.matches(&agent(&c, &[("vaccini", 7)], &["it"])));
        assert!(!r.matches(&agent(&c, &[("vaccini", 4)], &["it"])));
        assert!(!r.matches(&agent(&c, &[("vaccini", 9)], &["en"])));
        assert_eq!(r.primary_skill(), c.skill_id("vaccini"));
    }

    #[test]
    fn precedence_negation_and_bare_skills() {
        let c = catalog();
        let r = Requirement::parse(
            r#"triage || vaccini > 8 && !(lang != "en") && site == "roma""#,
            &c,
        )
        .unwrap();
        assert!(r.matches(&agent(&c, &[("triage", 1)], &[])));
        assert!(r.matches(&agent(&c, &[("vaccini", 9)], &["en"])));
        assert!(!r.matches(&agent(&c, &[("vaccini", 9)], &["it"])));
        let q = Requirement::parse(r#"queue == "info" && tenant == "asl" && true"#, &c).unwrap();
        assert!(q.matches(&agent(&c, &[], &[])));
        let absent = Requirement::parse("triage == 0", &c).unwrap();
        assert!(absent.matches(&agent(&c, &[("vaccini", 3)], &[])));
    }

    #[test]
    fn errors_say_where_and_what() {
        let c = catalog();
        for (text, want) in [
            ("vacini >= 5", "unknown skill \"vacini\""),
            (r#"lang == "de""#, "unknown language \"de\""),
            ("vaccini >= 11", "expected a level"),
            ("vaccini >=", "expected a level"),
            ("(vaccini", "expected )"),
            ("vaccini triage", "unexpected input"),
            ("", "expected a skill"),
            ("&& triage", "expected a skill"),
            (r#"lang > "it""#, "takes == or !="),
            (r#"site == "ro ma""#, "names are"),
            (r#"site == "roma"#, "unterminated"),
        ] {
            let e = Requirement::parse(text, &c).unwrap_err();
            assert!(e.message.contains(want), "{text:?}: {e}");
        }
        let deep = format!("{}triage{}", "(".repeat(40), ")".repeat(40));
        assert!(Requirement::parse(&deep, &c).is_err());
        let bangs = format!("{}triage", "!".repeat(40));
        assert!(Requirement::parse(&bangs, &c).is_err());
        let long = "triage || ".repeat(200) + "triage";
        assert!(Requirement::parse(&long, &c).is_err());
    }

    proptest::proptest! {
        /// Any input: an error or a requirement, never a panic.
        #[test]
        fn never_panics(s in "[a-z()!&|=<>\" 0-9]{0,64}") {
            let _ = Requirement::parse(&s, &catalog());
        }
    }
}
