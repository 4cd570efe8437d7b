//! A loaded policy: sections by request type, rule sets OR-ed in order, rules AND-ed.

use std::fmt;
use std::sync::Arc;

use jiff::Timestamp;
use jiff::tz::TimeZone;

use crate::error::{LoadError, LoadErrorKind, Location, Warning};
use crate::quota::{QuotaLimit, QuotaStore, QuotaWindow};
use crate::request::{Request, RequestType};
use crate::rule_id::RuleIdGenerator;
use crate::rules::{self, EvalContext, Rule, SessionParams, describe};
use crate::yaml::{self, MapEntry, NodeKind, Value};

/// A validated, compiled policy. Immutable: a new version is a new `Policy`.
#[derive(Debug)]
pub struct Policy {
    /// Indexed by [`RequestType::index`]; `None` when the file has no section for the type.
    sections: [Option<Section>; 8],
    /// Request types in file order (for dumping).
    order: Vec<RequestType>,
    warnings: Vec<Warning>,
    limits: Vec<QuotaLimit>,
}

#[derive(Debug)]
struct Section {
    rule_sets: Vec<RuleSet>,
}

#[derive(Debug)]
struct RuleSet {
    rules: Vec<CompiledRule>,
    /// The limits of the set's throttle rules, checked and consumed together.
    quotas: Vec<QuotaLimit>,
    session: Option<SessionParams>,
}

#[derive(Debug)]
pub(crate) struct CompiledRule {
    pub id: Arc<str>,
    pub name: &'static str,
    rule: Rule,
    /// The entry as written (after YAML merges), for `dump`.
    pub source: Vec<MapEntry>,
}

/// The outcome of evaluating one request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    Approved {
        /// The rule set that approved; `None` for a default approval (no section).
        rule_set: Option<usize>,
        /// Bounds of the session, when the winning set has a `session-params-rule`.
        session: Option<SessionParams>,
    },
    Denied(DenyReason),
}

impl Decision {
    pub fn is_approved(&self) -> bool {
        matches!(self, Decision::Approved { .. })
    }

    pub fn rule_set(&self) -> Option<usize> {
        match self {
            Decision::Approved { rule_set, .. } => *rule_set,
            Decision::Denied(_) => None,
        }
    }
}

/// Why a request was denied (for audit and the client's reason code; it says nothing
/// more of the policy).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DenyReason {
    /// No section for the request type (and the type is not approved by default).
    NotInPolicy,
    /// No rule set approved (an empty section has none).
    Policy,
    /// A rule set would have approved but its quota is used up.
    Quota,
    /// The quota store failed: nothing was consumed (fail closed).
    Unavailable,
}

impl DenyReason {
    pub fn as_str(self) -> &'static str {
        match self {
            DenyReason::NotInPolicy | DenyReason::Policy => "policy",
            DenyReason::Quota => "quota",
            DenyReason::Unavailable => "unavailable",
        }
    }
}

/// A rule set whose rules (other than throttles) approve a request: it wins if its quotas
/// can be consumed.
#[derive(Debug, Clone, Copy)]
pub struct Candidate<'p> {
    pub rule_set: usize,
    pub quotas: &'p [QuotaLimit],
    pub session: Option<SessionParams>,
}

/// A request's decision up to its quotas ([`Policy::prepare`]).
#[derive(Debug, Clone)]
pub struct Prepared<'p> {
    profile_id: &'p [u8],
    approved_by_default: bool,
    window: QuotaWindow,
    /// The rule sets that approve before quotas, in order; `None` when the policy has no
    /// section for the request type.
    candidates: Option<Vec<Candidate<'p>>>,
}

impl Prepared<'_> {
    /// The decision: the first candidate whose quotas can be consumed wins, and consumes
    /// them.
    pub fn decide(&self, store: &dyn QuotaStore) -> Decision {
        let Some(candidates) = &self.candidates else {
            return if self.approved_by_default {
                Decision::Approved {
                    rule_set: None,
                    session: None,
                }
            } else {
                Decision::Denied(DenyReason::NotInPolicy)
            };
        };
        let mut quota_denied = false;
        for c in candidates {
            if !c.quotas.is_empty() {
                match store.try_consume(self.profile_id, c.quotas, self.window) {
                    Ok(true) => {}
                    Ok(false) => {
                        quota_denied = true;
                        continue;
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "quota store failed; request denied");
                        return Decision::Denied(DenyReason::Unavailable);
                    }
                }
            }
            return Decision::Approved {
                rule_set: Some(c.rule_set),
                session: c.session,
            };
        }
        Decision::Denied(if quota_denied {
            DenyReason::Quota
        } else {
            DenyReason::Policy
        })
    }
}

/// One rule of a policy: where it is, what it is, its id.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RuleInfo<'p> {
    pub request_type: RequestType,
    pub rule_set: usize,
    pub rule: usize,
    /// The rule's name (`per-profile-throttle-rule`, ...).
    pub name: &'static str,
    pub id: &'p str,
    /// A throttle whose counters live in the database.
    pub persistent: bool,
}

/// What a policy contains, for `kss policy check`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Summary {
    pub request_types: usize,
    pub rule_sets: usize,
    pub rules: usize,
    pub throttles: usize,
    pub persistent_throttles: usize,
    pub warnings: usize,
}

impl fmt::Display for Summary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let s = |n: usize| if n == 1 { "" } else { "s" };
        write!(
            f,
            "{} request type{}, {} rule set{}, {} rule{} ({} throttle{}, {} persistent), {} migration warning{}",
            self.request_types,
            s(self.request_types),
            self.rule_sets,
            s(self.rule_sets),
            self.rules,
            s(self.rules),
            self.throttles,
            s(self.throttles),
            self.persistent_throttles,
            self.warnings,
            s(self.warnings),
        )
    }
}

impl Policy {
    /// The policy in force before any is loaded: no sections, so only the request types
    /// approved by default (`create_profile`, `create_location`) are approved.
    pub fn empty() -> Policy {
        Policy {
            sections: Default::default(),
            order: Vec::new(),
            warnings: Vec::new(),
            limits: Vec::new(),
        }
    }

    /// Parses and validates a policy file. Any error rejects the whole file.
    pub fn load(text: &str) -> Result<Policy, LoadError> {
        let (root, yaml_warnings) = yaml::load(text).map_err(|e| {
            LoadError::new(
                &Location {
                    line: Some(e.line),
                    column: (e.column > 0).then_some(e.column),
                    ..Location::default()
                },
                LoadErrorKind::Yaml(e.message),
            )
        })?;
        let mut warnings: Vec<Warning> = yaml_warnings
            .into_iter()
            .map(|w| {
                Warning::new(
                    &Location {
                        line: Some(w.line),
                        ..Location::default()
                    },
                    w.message,
                )
            })
            .collect();
        let root =
            root.ok_or_else(|| LoadError::new(&Location::default(), LoadErrorKind::Empty))?;
        let NodeKind::Map(top) = &root.kind else {
            return Err(LoadError::new(
                &Location {
                    line: Some(root.line),
                    ..Location::default()
                },
                LoadErrorKind::NotAMapping {
                    found: root.type_name(),
                },
            ));
        };

        let mut ids = RuleIdGenerator::default();
        let mut explicit_ids: Vec<(String, Location)> = Vec::new();
        let mut sections: [Option<Section>; 8] = Default::default();
        let mut order = Vec::new();
        let mut limits = Vec::new();
        for entry in top {
            let loc = Location::section(&entry.key.text, entry.key_line);
            let request_type: RequestType = match entry.key.as_str().map(str::parse) {
                Some(Ok(t)) => t,
                _ => {
                    return Err(LoadError::new(
                        &loc,
                        LoadErrorKind::UnknownRequestType(entry.key.text.clone()),
                    ));
                }
            };
            let NodeKind::Seq(set_nodes) = &entry.value.kind else {
                return Err(LoadError::new(
                    &loc,
                    LoadErrorKind::SectionNotList {
                        found: entry.value.type_name(),
                    },
                ));
            };
            let mut rule_sets = Vec::with_capacity(set_nodes.len());
            for (set_index, set_node) in set_nodes.iter().enumerate() {
                let set_loc = loc.at_rule_set(set_index, set_node.line);
                let NodeKind::Seq(rule_nodes) = &set_node.kind else {
                    return Err(LoadError::new(
                        &set_loc,
                        LoadErrorKind::RuleSetNotList {
                            found: set_node.type_name(),
                        },
                    ));
                };
                let mut set = RuleSet {
                    rules: Vec::with_capacity(rule_nodes.len()),
                    quotas: Vec::new(),
                    session: None,
                };
                for (rule_index, rule_node) in rule_nodes.iter().enumerate() {
                    let rule_loc = set_loc.at_rule(rule_index, rule_node.line);
                    let NodeKind::Map(rule_entries) = &rule_node.kind else {
                        return Err(LoadError::new(
                            &rule_loc,
                            LoadErrorKind::RuleNotMapping {
                                found: rule_node.type_name(),
                            },
                        ));
                    };
                    let compiled = compile_rule(
                        request_type,
                        rule_entries,
                        &rule_loc,
                        &mut ids,
                        &mut explicit_ids,
                        &mut warnings,
                    )?;
                    match &compiled.rule {
                        Rule::Throttle(t) => set.quotas.push(t.limit(&compiled.id)),
                        Rule::SessionParams(p) => {
                            set.session = Some(match set.session {
                                Some(s) => s.tighten(*p),
                                None => *p,
                            })
                        }
                        _ => {}
                    }
                    set.rules.push(compiled);
                }
                limits.extend(set.quotas.iter().cloned());
                rule_sets.push(set);
            }
            let slot = &mut sections[request_type.index()];
            if slot.is_none() {
                order.push(request_type);
            }
            *slot = Some(Section { rule_sets });
        }
        Ok(Policy {
            sections,
            order,
            warnings,
            limits,
        })
    }

    /// Migration warnings found while loading.
    pub fn warnings(&self) -> &[Warning] {
        &self.warnings
    }

    /// Every throttle's limits (for listing who is at quota).
    pub fn quota_limits(&self) -> &[QuotaLimit] {
        &self.limits
    }

    /// Rule sets that approve `request` at `at` before quotas, in order, evaluated lazily.
    /// `None` when the policy has no section for the request type.
    pub fn candidates<'p: 'a, 'a>(
        &'p self,
        request: &'a Request,
        at: Timestamp,
        tz: &'a TimeZone,
    ) -> Option<impl Iterator<Item = Candidate<'p>> + 'a> {
        let section = self.sections[request.request_type.index()].as_ref()?;
        let ctx = EvalContext::new(request, at, tz);
        Some(
            section
                .rule_sets
                .iter()
                .enumerate()
                .filter(move |(_, set)| set.checks_pass(&ctx))
                .map(|(i, set)| Candidate {
                    rule_set: i,
                    quotas: &set.quotas,
                    session: set.session,
                }),
        )
    }

    /// Decides a request: the first rule set whose rules approve and whose quotas can be
    /// consumed wins, and consumes them. The same as [`Policy::prepare`] then
    /// [`Prepared::decide`].
    pub fn evaluate(
        &self,
        request: &Request,
        at: Timestamp,
        tz: &TimeZone,
        store: &dyn QuotaStore,
    ) -> Decision {
        self.prepare(request, at, tz).decide(store)
    }

    /// Evaluates every rule of `request` but its quotas: the part of a decision that reads
    /// nothing but the request and the clock (regular expressions over client-supplied
    /// metadata among it), so that it can run before the quota counters are read and
    /// locked. Rule sets after the first one without quotas are not evaluated: that one
    /// would win.
    pub fn prepare<'p>(
        &'p self,
        request: &'p Request,
        at: Timestamp,
        tz: &TimeZone,
    ) -> Prepared<'p> {
        let candidates = self.candidates(request, at, tz).map(|candidates| {
            let mut reached = Vec::new();
            for c in candidates {
                let last = c.quotas.is_empty();
                reached.push(c);
                if last {
                    break;
                }
            }
            reached
        });
        Prepared {
            profile_id: &request.profile_id,
            approved_by_default: request.request_type.approved_by_default(),
            window: QuotaWindow::of(tz.to_datetime(at)),
            candidates,
        }
    }

    /// Counts for `kss policy check`.
    pub fn summary(&self) -> Summary {
        let sets = || self.sections.iter().flatten().flat_map(|s| &s.rule_sets);
        Summary {
            request_types: self.order.len(),
            rule_sets: sets().count(),
            rules: sets().map(|s| s.rules.len()).sum(),
            throttles: self.limits.len(),
            persistent_throttles: self.limits.iter().filter(|l| l.persistent).count(),
            warnings: self.warnings.len(),
        }
    }

    /// Every rule's id, in file order: (request type, rule set, rule, id).
    pub fn rule_ids(&self) -> Vec<(RequestType, usize, usize, String)> {
        self.rules()
            .into_iter()
            .map(|r| (r.request_type, r.rule_set, r.rule, r.id.to_string()))
            .collect()
    }

    /// Every rule, in file order, with where it is and its id.
    pub fn rules(&self) -> Vec<RuleInfo<'_>> {
        let mut out = Vec::new();
        for t in &self.order {
            for (s, set) in self.rule_sets(*t).iter().enumerate() {
                for (r, rule) in set.rules.iter().enumerate() {
                    out.push(RuleInfo {
                        request_type: *t,
                        rule_set: s,
                        rule: r,
                        name: rule.name,
                        id: &rule.id,
                        persistent: matches!(&rule.rule, Rule::Throttle(t) if t.persistent),
                    });
                }
            }
        }
        out
    }

    /// The canonical YAML of the policy with every `rule_id` filled in.
    pub fn dump(&self) -> String {
        let sections: Vec<(RequestType, Vec<Vec<&CompiledRule>>)> = self
            .order
            .iter()
            .map(|t| {
                let sets = self
                    .rule_sets(*t)
                    .iter()
                    .map(|s| s.rules.iter().collect())
                    .collect();
                (*t, sets)
            })
            .collect();
        crate::dump::policy_yaml(&sections)
    }

    fn rule_sets(&self, t: RequestType) -> &[RuleSet] {
        self.sections[t.index()]
            .as_ref()
            .map(|s| s.rule_sets.as_slice())
            .unwrap_or_default()
    }
}

impl RuleSet {
    fn checks_pass(&self, ctx: &EvalContext<'_>) -> bool {
        self.rules.iter().all(|r| match r.rule.approves(ctx) {
            Ok(ok) => ok,
            Err(e) => {
                tracing::warn!(rule_id = %r.id, rule = r.name, error = %e, "rule failed; its rule set denies");
                false
            }
        })
    }
}

fn compile_rule(
    request_type: RequestType,
    entries: &[MapEntry],
    loc: &Location,
    ids: &mut RuleIdGenerator,
    explicit_ids: &mut Vec<(String, Location)>,
    warnings: &mut Vec<Warning>,
) -> Result<CompiledRule, LoadError> {
    let name_entry = entries
        .iter()
        .find(|e| e.key.as_str() == Some("rule"))
        .ok_or_else(|| LoadError::new(loc, LoadErrorKind::MissingRuleName))?;
    let name = match name_entry.value.as_scalar() {
        Some(s) if s.value == Value::Str => s.text.as_str(),
        _ => {
            return Err(LoadError::new(
                &loc.at_argument("rule", name_entry.key_line),
                LoadErrorKind::BadValue {
                    expected: "a rule name",
                    found: describe(&name_entry.value),
                },
            ));
        }
    };
    let (name, rule) = rules::compile(request_type, name, entries, loc, warnings)?;
    let loc = loc.named(name);
    let id = match explicit_rule_id(entries, &loc)? {
        Some(id) => {
            if let Some((_, first)) = explicit_ids.iter().find(|(seen, _)| *seen == id) {
                warnings.push(Warning::new(
                    &loc,
                    format!(
                        "rule_id '{id}' is also used at {first}: the two rules share one quota counter"
                    ),
                ));
            }
            explicit_ids.push((id.clone(), loc.clone()));
            ids.explicit(&id);
            id
        }
        None => ids.generate(entries),
    };
    Ok(CompiledRule {
        id: id.into(),
        name,
        rule,
        source: entries.to_vec(),
    })
}

/// The `rule_id` written in the file, if any. As in the original, an empty or null id
/// counts as absent (and the entry, including it, is hashed).
fn explicit_rule_id(entries: &[MapEntry], loc: &Location) -> Result<Option<String>, LoadError> {
    let Some(entry) = entries.iter().find(|e| e.key.as_str() == Some("rule_id")) else {
        return Ok(None);
    };
    let bad = || {
        LoadError::new(
            &loc.at_argument("rule_id", entry.key_line),
            LoadErrorKind::BadValue {
                expected: "a rule id (a string)",
                found: describe(&entry.value),
            },
        )
    };
    let scalar = entry.value.as_scalar().ok_or_else(bad)?;
    match &scalar.value {
        Value::Null | Value::Bool(false) | Value::Int(0) => Ok(None),
        Value::Str if scalar.text.is_empty() => Ok(None),
        Value::Str => Ok(Some(scalar.text.clone())),
        Value::Int(i) => Ok(Some(i.to_string())),
        _ => Err(bad()),
    }
}
