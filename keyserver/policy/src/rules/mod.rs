//! The rules a policy is built from: argument checking, compilation and evaluation. What
//! each rule and argument means: `docs/policy.md`, *Rules*.

mod meta;
mod profile_id;
mod session;
mod throttle;
mod time_range;

use std::cell::OnceCell;

use jiff::Timestamp;
use jiff::civil::DateTime;
use jiff::tz::TimeZone;

pub use session::SessionParams;
pub(crate) use throttle::Throttle;

use crate::error::{LoadError, LoadErrorKind, Location, Warning};
use crate::request::{Request, RequestType};
use crate::yaml::{MapEntry, Node, NodeKind, Scalar, Value};

pub const META: &str = "meta-rule";
pub const THROTTLE: &str = "per-profile-throttle-rule";
pub const PROFILE_ID: &str = "profile-id-rule";
pub const TIME_RANGE: &str = "time-range-rule";
pub const APPROVE: &str = "approve-rule";
pub const REJECT: &str = "reject-rule";
pub const SESSION_PARAMS: &str = "session-params-rule";

/// Every rule name a policy may use.
pub const RULE_NAMES: &[&str] = &[
    META,
    THROTTLE,
    PROFILE_ID,
    TIME_RANGE,
    APPROVE,
    REJECT,
    SESSION_PARAMS,
];

/// A rule, compiled: patterns built, times parsed, limits checked.
#[derive(Debug)]
pub(crate) enum Rule {
    Meta(meta::MetaRule),
    Throttle(Throttle),
    ProfileId(profile_id::ProfileIdRule),
    TimeRange(time_range::TimeRange),
    Approve,
    Reject,
    SessionParams(SessionParams),
}

/// A rule that could not decide (it then counts as a denial for its rule set).
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct RuleError(pub String);

/// What a rule sees of one evaluation: the request, the instant and the keyserver's zone.
pub(crate) struct EvalContext<'a> {
    pub request: &'a Request,
    pub at: Timestamp,
    pub tz: &'a TimeZone,
    local: OnceCell<DateTime>,
}

impl<'a> EvalContext<'a> {
    pub fn new(request: &'a Request, at: Timestamp, tz: &'a TimeZone) -> Self {
        EvalContext {
            request,
            at,
            tz,
            local: OnceCell::new(),
        }
    }

    /// The request's instant on the keyserver's wall clock (computed once).
    pub fn local(&self) -> DateTime {
        *self.local.get_or_init(|| self.tz.to_datetime(self.at))
    }
}

impl Rule {
    /// Whether the rule approves. Throttles are not checked here: their quota is checked
    /// and consumed atomically by the quota store once every other rule of the set approves.
    pub fn approves(&self, ctx: &EvalContext<'_>) -> Result<bool, RuleError> {
        match self {
            Rule::Meta(r) => r.approves(&ctx.request.auth_meta),
            Rule::ProfileId(r) => Ok(r.approves(ctx.request)),
            Rule::TimeRange(r) => Ok(r.approves(ctx)),
            Rule::Throttle(_) | Rule::Approve | Rule::SessionParams(_) => Ok(true),
            Rule::Reject => Ok(false),
        }
    }
}

/// Request types a rule does not apply to (`docs/policy.md`, *Rules that do not apply to a
/// request type*).
fn incompatible(rule: &str, request_type: RequestType) -> bool {
    match request_type {
        RequestType::CreateProfile => matches!(rule, PROFILE_ID | THROTTLE | META),
        RequestType::CreateLocation | RequestType::Search => rule == META,
        _ => false,
    }
}

/// Compiles one rule entry (`rule: <name>` plus arguments) found at `loc`.
pub(crate) fn compile(
    request_type: RequestType,
    name: &str,
    entries: &[MapEntry],
    loc: &Location,
    warnings: &mut Vec<Warning>,
) -> Result<(&'static str, Rule), LoadError> {
    let Some(&name) = RULE_NAMES.iter().find(|n| **n == name) else {
        return Err(LoadError::new(
            loc,
            LoadErrorKind::UnknownRule(name.to_string()),
        ));
    };
    let loc = loc.named(name);
    if incompatible(name, request_type) {
        return Err(LoadError::new(
            &loc,
            LoadErrorKind::Incompatible {
                rule: name,
                request_type,
            },
        ));
    }
    let accepted: &'static [&'static str] = match name {
        META => meta::ARGS,
        THROTTLE => throttle::ARGS,
        PROFILE_ID => profile_id::ARGS,
        TIME_RANGE => time_range::ARGS,
        SESSION_PARAMS => session::ARGS,
        _ => &[],
    };
    let ignored: &[&str] = if name == THROTTLE {
        throttle::IGNORED_ARGS
    } else {
        &[]
    };
    for entry in entries {
        let key = entry.key.as_str();
        let known = key.is_some_and(|k| {
            k == "rule" || k == "rule_id" || accepted.contains(&k) || ignored.contains(&k)
        });
        if !known {
            return Err(LoadError::new(
                &loc.at_argument(&entry.key.text, entry.key_line),
                LoadErrorKind::UnknownArgument {
                    rule: name,
                    accepted,
                },
            ));
        }
    }
    let args = Args { entries, loc: &loc };
    let rule = match name {
        META => Rule::Meta(meta::MetaRule::compile(&args, warnings)?),
        THROTTLE => Rule::Throttle(Throttle::compile(&args, warnings)?),
        PROFILE_ID => Rule::ProfileId(profile_id::ProfileIdRule::compile(&args)?),
        TIME_RANGE => Rule::TimeRange(time_range::TimeRange::compile(&args, warnings)?),
        SESSION_PARAMS => Rule::SessionParams(SessionParams::compile(&args, warnings)?),
        APPROVE => Rule::Approve,
        _ => Rule::Reject,
    };
    Ok((name, rule))
}

/// A rule's arguments, with typed readers whose errors name the argument.
pub(crate) struct Args<'a> {
    entries: &'a [MapEntry],
    loc: &'a Location,
}

/// One argument: its node and where it is.
pub(crate) struct Arg<'a> {
    pub node: &'a Node,
    pub loc: Location,
}

impl<'a> Args<'a> {
    pub fn get(&self, name: &str) -> Option<Arg<'a>> {
        self.entries
            .iter()
            .find(|e| e.key.as_str() == Some(name))
            .map(|e| Arg {
                node: &e.value,
                loc: self.loc.at_argument(name, e.key_line),
            })
    }

    pub fn loc(&self) -> &Location {
        self.loc
    }
}

impl<'a> Arg<'a> {
    pub fn error(&self, kind: LoadErrorKind) -> LoadError {
        LoadError::new(&self.loc, kind)
    }

    pub fn bad(&self, expected: &'static str) -> LoadError {
        self.error(LoadErrorKind::BadValue {
            expected,
            found: describe(self.node),
        })
    }

    pub fn scalar(&self) -> Option<&'a Scalar> {
        self.node.as_scalar()
    }

    pub fn bool(&self) -> Result<bool, LoadError> {
        match self.scalar().map(|s| &s.value) {
            Some(Value::Bool(b)) => Ok(*b),
            _ => Err(self.bad("a boolean (true or false)")),
        }
    }

    pub fn int(&self, expected: &'static str) -> Result<i128, LoadError> {
        match self.scalar().map(|s| &s.value) {
            Some(Value::Int(i)) => Ok(*i),
            _ => Err(self.bad(expected)),
        }
    }

    /// The items of a list argument, each with this argument's location and its own line.
    pub fn list(&self, expected: &'static str) -> Result<Vec<Arg<'a>>, LoadError> {
        match &self.node.kind {
            NodeKind::Seq(items) => Ok(items
                .iter()
                .map(|node| Arg {
                    node,
                    loc: Location {
                        line: Some(node.line),
                        ..self.loc.clone()
                    },
                })
                .collect()),
            _ => Err(self.bad(expected)),
        }
    }

    pub fn string(&self, expected: &'static str) -> Result<&'a str, LoadError> {
        match self.scalar() {
            Some(s) => s.as_str().ok_or_else(|| self.bad(expected)),
            None => Err(self.bad(expected)),
        }
    }
}

/// How a value reads in an error message: its type and, for scalars, its text.
pub(crate) fn describe(node: &Node) -> String {
    match &node.kind {
        NodeKind::Scalar(s) if s.value == Value::Null => "null".to_string(),
        NodeKind::Scalar(s) => format!("{} '{}'", s.value.type_name(), s.text),
        _ => format!("a {}", node.type_name()),
    }
}
