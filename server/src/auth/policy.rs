//! Authorization policy: which containers a user may see and open, which commands they may exec there, at
//! which access level, how many terminals at once. Read from a TOML file (`--policy`), reloaded on SIGHUP.
//!
//! A user is matched by subject or group; the rules that match them and a container are combined (the most
//! permissive level, the union of commands). No matching rule: the container does not exist for that user.
//!
//! Other users' terminals are the exception to adding up: the level at which a user reaches them is the best
//! level of a *single* rule that is `shared`. So a shared `view` rule and an unshared `interact` rule on the same
//! container let the user watch colleagues' terminals there, never type into them; typing into someone else's
//! terminal needs one rule that grants both `interact` and `shared`.

use std::collections::{BTreeMap, HashSet};
use std::path::Path;

use globset::{Glob, GlobSet, GlobSetBuilder};
use serde::Deserialize;

use super::Principal;
pub use app::protocol::RecordLevel;

/// Most rules in one policy file.
pub const MAX_RULES: usize = 1000;

/// What a user may do in a container.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Level {
    /// Attach read-only to terminals (needs `shared` to reach other users' terminals).
    View,
    /// Open terminals, type into them, resize and close them.
    Interact,
}

/// Commands a user may exec.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Commands {
    Any,
    /// Exact argv lists.
    Only(Vec<Vec<String>>),
}

impl Commands {
    fn union(&mut self, other: &Commands) {
        match (&mut *self, other) {
            (Commands::Any, _) => {}
            (_, Commands::Any) => *self = Commands::Any,
            (Commands::Only(mine), Commands::Only(theirs)) => {
                for c in theirs {
                    if !mine.contains(c) {
                        mine.push(c.clone());
                    }
                }
            }
        }
    }

    pub fn allows(&self, argv: &[String]) -> bool {
        match self {
            Commands::Any => true,
            Commands::Only(list) => list.iter().any(|c| c == argv),
        }
    }
}

/// What the matching rules allow a user in one container.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Grant {
    pub level: Level,
    /// May open the default login shell (a `start-terminal` without `command`).
    pub login_shell: bool,
    pub commands: Commands,
    /// The level at which other users' terminals in this container may be reached: the best level of one
    /// `shared` rule (`None`: not at all). Never more than `level`.
    pub shared: Option<Level>,
    /// May start, stop and restart the container (and remove it, when it is someone's sandbox): a matching
    /// rule has `manage = true`.
    pub manage: bool,
    /// What is recorded of its terminals: the highest `record` of the matching rules (`None`: no rule says, so
    /// `--record` decides).
    pub record: Option<RecordLevel>,
}

/// Whose recordings a user may see (the rule field `recordings`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RecordingScope {
    /// Their own.
    Own,
    /// Everyone's; and they may delete recordings.
    All,
}

/// Which sandbox profiles a rule lets its users create.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Profiles {
    Any,
    Only(Vec<String>),
}

impl Profiles {
    fn allows(&self, profile: &str) -> bool {
        match self {
            Profiles::Any => true,
            Profiles::Only(list) => list.iter().any(|p| p == profile),
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct PolicyFile {
    #[serde(default)]
    rule: Vec<RuleFile>,
    #[serde(default)]
    revoked: RevokedFile,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RevokedFile {
    #[serde(default)]
    subjects: Vec<String>,
    #[serde(default)]
    token_ids: Vec<String>,
}

#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum CommandsFile {
    Word(String),
    List(Vec<Vec<String>>),
}

fn default_true() -> bool {
    true
}

fn default_level() -> Level {
    Level::Interact
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RuleFile {
    #[serde(default)]
    subjects: Vec<String>,
    #[serde(default)]
    groups: Vec<String>,
    containers: Option<Vec<String>>,
    #[serde(default)]
    labels: BTreeMap<String, String>,
    #[serde(default = "default_level")]
    access: Level,
    commands: Option<CommandsFile>,
    #[serde(default = "default_true")]
    login_shell: bool,
    #[serde(default)]
    shared: bool,
    max_terminals: Option<usize>,
    /// `"any"` or a list of profile names.
    sandboxes: Option<CommandsFileWords>,
    max_sandboxes: Option<usize>,
    #[serde(default)]
    manage: bool,
    record: Option<RecordLevel>,
    recordings: Option<RecordingScope>,
}

#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum CommandsFileWords {
    Word(String),
    List(Vec<String>),
}

#[derive(Debug)]
struct Rule {
    subjects: Vec<String>,
    groups: Vec<String>,
    /// Container name globs; `None` matches every name.
    names: Option<GlobSet>,
    /// Labels the container must carry; `{sub}` in a value stands for the user's subject.
    labels: BTreeMap<String, String>,
    grant: Grant,
    max_terminals: Option<usize>,
    /// Profiles its users may create sandboxes from (`None`: none).
    sandboxes: Option<Profiles>,
    max_sandboxes: Option<usize>,
    recordings: Option<RecordingScope>,
}

impl Rule {
    fn applies_to(&self, p: &Principal) -> bool {
        self.subjects.iter().any(|s| s == "*" || *s == p.subject) || self.groups.iter().any(|g| p.groups.contains(g))
    }

    fn matches(&self, p: &Principal, name: &str, labels: &BTreeMap<String, String>) -> bool {
        self.names.as_ref().is_none_or(|g| g.is_match(name))
            && self
                .labels
                .iter()
                .all(|(k, v)| labels.get(k).is_some_and(|have| *have == v.replace("{sub}", &p.subject)))
    }
}

/// A loaded policy.
#[derive(Debug)]
pub struct Policy {
    rules: Vec<Rule>,
    revoked_subjects: HashSet<String>,
    revoked_token_ids: HashSet<String>,
    /// Where it came from (`None`: the built-in allow-all).
    pub source: Option<std::path::PathBuf>,
}

/// Why a policy file could not be loaded (the previous policy, if any, stays).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PolicyError {
    #[error("no --policy file was given; nothing to reload")]
    NoFile,
    #[error("cannot read the policy {}: {reason}", path.display())]
    Unreadable { path: std::path::PathBuf, reason: String },
    #[error("policy {}: {reason}", path.display())]
    Invalid { path: std::path::PathBuf, reason: String },
}

impl Policy {
    /// Without a policy file: whoever is authenticated may do everything.
    pub fn allow_all() -> Policy {
        Policy {
            rules: vec![Rule {
                subjects: vec!["*".into()],
                groups: Vec::new(),
                names: None,
                labels: BTreeMap::new(),
                grant: Grant {
                    level: Level::Interact,
                    login_shell: true,
                    commands: Commands::Any,
                    shared: Some(Level::Interact),
                    manage: true,
                    record: None,
                },
                max_terminals: None,
                sandboxes: Some(Profiles::Any),
                max_sandboxes: None,
                recordings: Some(RecordingScope::All),
            }],
            revoked_subjects: HashSet::new(),
            revoked_token_ids: HashSet::new(),
            source: None,
        }
    }

    pub fn load(path: &Path) -> Result<Policy, PolicyError> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| PolicyError::Unreadable { path: path.to_path_buf(), reason: e.to_string() })?;
        let mut p = Policy::parse(&text).map_err(|reason| PolicyError::Invalid { path: path.to_path_buf(), reason })?;
        p.source = Some(path.to_path_buf());
        Ok(p)
    }

    pub fn parse(text: &str) -> Result<Policy, String> {
        let file: PolicyFile = toml::from_str(text).map_err(|e| e.to_string())?;
        if file.rule.len() > MAX_RULES {
            return Err(format!("more than {MAX_RULES} rules"));
        }
        let mut rules = Vec::new();
        for (i, r) in file.rule.into_iter().enumerate() {
            let n = i + 1;
            if r.subjects.is_empty() && r.groups.is_empty() {
                return Err(format!("rule {n} names no subjects or groups, so it would apply to nobody"));
            }
            let names = match r.containers {
                None => None,
                Some(globs) => {
                    let mut b = GlobSetBuilder::new();
                    for g in &globs {
                        b.add(Glob::new(g).map_err(|e| format!("rule {n}: container pattern {g:?}: {e}"))?);
                    }
                    Some(b.build().map_err(|e| format!("rule {n}: {e}"))?)
                }
            };
            let commands = match r.commands {
                None => Commands::Only(Vec::new()),
                Some(CommandsFile::Word(w)) if w == "any" => Commands::Any,
                Some(CommandsFile::Word(w)) => {
                    return Err(format!("rule {n}: commands must be \"any\" or a list of argv lists, not {w:?}"));
                }
                Some(CommandsFile::List(list)) => {
                    if list.iter().any(|c| c.is_empty()) {
                        return Err(format!("rule {n}: an allowed command is an empty list"));
                    }
                    Commands::Only(list)
                }
            };
            if r.max_terminals == Some(0) {
                return Err(format!("rule {n}: max_terminals must be at least 1 (leave the user out instead)"));
            }
            if r.max_sandboxes == Some(0) {
                return Err(format!("rule {n}: max_sandboxes must be at least 1 (leave sandboxes out instead)"));
            }
            let sandboxes = match r.sandboxes {
                None => None,
                Some(CommandsFileWords::Word(w)) if w == "any" => Some(Profiles::Any),
                Some(CommandsFileWords::Word(w)) => {
                    return Err(format!("rule {n}: sandboxes must be \"any\" or a list of profile names, not {w:?}"));
                }
                Some(CommandsFileWords::List(list)) => Some(Profiles::Only(list)),
            };
            rules.push(Rule {
                subjects: r.subjects,
                groups: r.groups,
                names,
                labels: r.labels,
                grant: Grant {
                    level: r.access,
                    login_shell: r.login_shell,
                    commands,
                    shared: r.shared.then_some(r.access),
                    manage: r.manage,
                    record: r.record,
                },
                max_terminals: r.max_terminals,
                sandboxes,
                max_sandboxes: r.max_sandboxes,
                recordings: r.recordings,
            });
        }
        Ok(Policy {
            rules,
            revoked_subjects: file.revoked.subjects.into_iter().collect(),
            revoked_token_ids: file.revoked.token_ids.into_iter().collect(),
            source: None,
        })
    }

    /// What `p` may do in the container `name` with `labels`; `None`: nothing (it is hidden from them).
    pub fn grant(&self, p: &Principal, name: &str, labels: &BTreeMap<String, String>) -> Option<Grant> {
        let mut out: Option<Grant> = None;
        for rule in self.rules.iter().filter(|r| r.applies_to(p) && r.matches(p, name, labels)) {
            let g = &rule.grant;
            match &mut out {
                None => out = Some(g.clone()),
                Some(acc) => {
                    acc.level = acc.level.max(g.level);
                    acc.login_shell |= g.login_shell;
                    // Not `|`: each rule's shared level stands on its own (see the module comment).
                    acc.shared = acc.shared.max(g.shared);
                    acc.commands.union(&g.commands);
                    acc.manage |= g.manage;
                    acc.record = acc.record.max(g.record);
                }
            }
        }
        out
    }

    /// The most terminals `p` may hold at once: the largest `max_terminals` of the rules that apply to them.
    pub fn quota(&self, p: &Principal) -> Option<usize> {
        self.rules.iter().filter(|r| r.applies_to(p)).filter_map(|r| r.max_terminals).max()
    }

    /// Whether `p` may create sandboxes from `profile`: a rule that applies to them lists it (or says `"any"`).
    pub fn may_create(&self, p: &Principal, profile: &str) -> bool {
        self.rules.iter().filter(|r| r.applies_to(p)).any(|r| r.sandboxes.as_ref().is_some_and(|s| s.allows(profile)))
    }

    /// The most sandboxes `p` may hold at once: the largest `max_sandboxes` of the rules that apply to them.
    pub fn sandbox_quota(&self, p: &Principal) -> Option<usize> {
        self.rules.iter().filter(|r| r.applies_to(p)).filter_map(|r| r.max_sandboxes).max()
    }

    /// Whose recordings `p` may see: the widest `recordings` of the rules that apply to them (default: own).
    pub fn recording_scope(&self, p: &Principal) -> RecordingScope {
        self.rules.iter().filter(|r| r.applies_to(p)).filter_map(|r| r.recordings).max().unwrap_or(RecordingScope::Own)
    }

    /// Why `p`'s credential is no longer honoured, if it is not.
    pub fn revoked(&self, p: &Principal) -> Option<&'static str> {
        if self.revoked_subjects.contains(&p.subject) {
            return Some("this user's access was revoked");
        }
        if p.token_id.as_ref().is_some_and(|j| self.revoked_token_ids.contains(j)) {
            return Some("this token was revoked");
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn user(sub: &str, groups: &[&str]) -> Principal {
        Principal {
            subject: sub.into(),
            groups: groups.iter().map(|g| g.to_string()).collect(),
            expires_at: None,
            token_id: Some(format!("jti-{sub}")),
        }
    }

    fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    const EXAMPLE: &str = r#"
        [[rule]]
        groups = ["dev"]
        labels = { "porthole.owner" = "{sub}" }
        max_terminals = 3

        [[rule]]
        subjects = ["alice"]
        containers = ["web-*"]
        commands = [["psql", "-U", "app"]]
        login_shell = false

        [[rule]]
        groups = ["audit"]
        containers = ["*"]
        access = "view"
        shared = true

        [revoked]
        subjects = ["mallory"]
        token_ids = ["jti-bob"]
    "#;

    #[test]
    fn rules_combine_per_user_and_container() {
        let p = Policy::parse(EXAMPLE).unwrap();
        let alice = user("alice", &["dev"]);
        let own = labels(&[("porthole.owner", "alice")]);
        let g = p.grant(&alice, "db", &own).unwrap();
        assert_eq!(g.level, Level::Interact);
        assert!(g.login_shell && g.shared.is_none());
        assert!(p.grant(&alice, "db", &labels(&[("porthole.owner", "bob")])).is_none());
        let web = p.grant(&alice, "web-1", &BTreeMap::new()).unwrap();
        assert!(!web.login_shell);
        assert!(web.commands.allows(&["psql".into(), "-U".into(), "app".into()]));
        assert!(!web.commands.allows(&["psql".into()]));
        // Two rules on one container: the union.
        let both = p.grant(&alice, "web-2", &own).unwrap();
        assert!(both.login_shell && both.commands.allows(&["psql".into(), "-U".into(), "app".into()]));
        assert_eq!(p.quota(&alice), Some(3));
        let auditor = user("carol", &["audit"]);
        let g = p.grant(&auditor, "anything", &BTreeMap::new()).unwrap();
        assert_eq!((g.level, g.shared), (Level::View, Some(Level::View)));
        assert!(p.grant(&user("dave", &[]), "web-1", &BTreeMap::new()).is_none());
    }

    #[test]
    fn shared_write_needs_one_rule_granting_both() {
        let p = Policy::parse(
            r#"
            [[rule]]
            groups = ["ops"]
            labels = { env = "prod" }
            access = "view"
            shared = true

            [[rule]]
            groups = ["ops"]
            containers = ["web-*"]

            [[rule]]
            groups = ["lead"]
            containers = ["web-*"]
            shared = true
            "#,
        )
        .unwrap();
        let prod = labels(&[("env", "prod")]);
        // Two rules: interact on their own terminals, but others' terminals only to watch.
        let g = p.grant(&user("olga", &["ops"]), "web-1", &prod).unwrap();
        assert_eq!((g.level, g.shared), (Level::Interact, Some(Level::View)));
        // Outside env=prod the shared rule does not reach: others' terminals are hidden.
        let g = p.grant(&user("olga", &["ops"]), "web-1", &BTreeMap::new()).unwrap();
        assert_eq!((g.level, g.shared), (Level::Interact, None));
        // One rule granting interact and shared: may type into others' terminals.
        let g = p.grant(&user("lee", &["ops", "lead"]), "web-1", &prod).unwrap();
        assert_eq!(g.shared, Some(Level::Interact));
    }

    #[test]
    fn revocations() {
        let p = Policy::parse(EXAMPLE).unwrap();
        assert!(p.revoked(&user("mallory", &[])).is_some());
        assert!(p.revoked(&user("bob", &[])).is_some());
        assert!(p.revoked(&user("alice", &[])).is_none());
    }

    #[test]
    fn mistakes_are_reported_clearly() {
        assert!(Policy::parse("[[rule]]\ncontainers = [\"x\"]").unwrap_err().contains("rule 1"));
        assert!(Policy::parse("[[rule]]\nsubjects = [\"a\"]\naccess = \"root\"").is_err());
        assert!(Policy::parse("[[rule]]\nsubjects = [\"a\"]\ncommands = \"all\"").unwrap_err().contains("any"));
        assert!(Policy::parse("[[rule]]\nsubjects = [\"a\"]\nbogus = 1").unwrap_err().contains("bogus"));
        assert!(Policy::parse("[[rule]]\nsubjects = [\"a\"]\ncontainers = [\"[\"]").is_err());
    }

    #[test]
    fn sandboxes_and_management() {
        let p = Policy::parse(
            r#"
            [[rule]]
            groups = ["dev"]
            containers = ["sandbox-*"]
            sandboxes = ["py", "scratch"]
            max_sandboxes = 2

            [[rule]]
            groups = ["oncall"]
            containers = ["web-*"]
            manage = true
            sandboxes = "any"
            max_sandboxes = 5
            "#,
        )
        .unwrap();
        let dev = user("dan", &["dev"]);
        assert!(p.may_create(&dev, "py") && !p.may_create(&dev, "gpu"));
        assert_eq!(p.sandbox_quota(&dev), Some(2));
        assert!(!p.grant(&dev, "sandbox-1", &BTreeMap::new()).unwrap().manage);
        let both = user("olga", &["dev", "oncall"]);
        assert!(p.may_create(&both, "gpu"));
        assert_eq!(p.sandbox_quota(&both), Some(5));
        assert!(p.grant(&both, "web-1", &BTreeMap::new()).unwrap().manage);
        assert!(!p.grant(&both, "sandbox-1", &BTreeMap::new()).unwrap().manage);
        let nobody = user("x", &[]);
        assert!(!p.may_create(&nobody, "py"));
        assert_eq!(p.sandbox_quota(&nobody), None);
        assert!(Policy::parse("[[rule]]\nsubjects = [\"a\"]\nsandboxes = \"all\"").unwrap_err().contains("any"));
        assert!(Policy::parse("[[rule]]\nsubjects = [\"a\"]\nmax_sandboxes = 0").is_err());
    }

    #[test]
    fn recording_levels_and_scopes() {
        let p = Policy::parse(
            r#"
            [[rule]]
            groups = ["dev"]
            record = "output"

            [[rule]]
            groups = ["dev"]
            containers = ["prod-*"]
            record = "all"

            [[rule]]
            groups = ["dev"]
            containers = ["scratch-*"]

            [[rule]]
            groups = ["audit"]
            recordings = "all"
            access = "view"
            "#,
        )
        .unwrap();
        let dev = user("dan", &["dev"]);
        assert_eq!(p.grant(&dev, "prod-1", &BTreeMap::new()).unwrap().record, Some(RecordLevel::All));
        assert_eq!(p.grant(&dev, "web", &BTreeMap::new()).unwrap().record, Some(RecordLevel::Output));
        assert_eq!(p.recording_scope(&dev), RecordingScope::Own);
        assert_eq!(p.recording_scope(&user("ann", &["audit", "dev"])), RecordingScope::All);
        let none = Policy::parse("[[rule]]\nsubjects = [\"a\"]").unwrap();
        assert_eq!(none.grant(&user("a", &[]), "x", &BTreeMap::new()).unwrap().record, None);
        assert!(Policy::parse("[[rule]]\nsubjects = [\"a\"]\nrecord = \"yes\"").is_err());
        assert!(Policy::parse("[[rule]]\nsubjects = [\"a\"]\nrecordings = \"mine\"").is_err());
    }

    #[test]
    fn allow_all_allows_everything() {
        let p = Policy::allow_all();
        let g = p.grant(&user("x", &[]), "any", &BTreeMap::new()).unwrap();
        assert!(
            g.commands.allows(&["anything".into()]) && g.shared == Some(Level::Interact) && g.level == Level::Interact
        );
        assert!(g.manage && p.may_create(&user("x", &[]), "any-profile") && p.sandbox_quota(&user("x", &[])).is_none());
    }
}
