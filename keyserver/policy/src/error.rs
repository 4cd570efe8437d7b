//! Load errors and migration warnings, located by request type, rule set, rule and argument.

use std::fmt;

use crate::request::RequestType;

/// Where in a policy file something is: each part is present when known.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Location {
    /// The request type section (as written, when it is not a known type).
    pub request_type: Option<String>,
    /// Index of the rule set within its request type (0-based, file order).
    pub rule_set: Option<usize>,
    /// Index of the rule within its rule set (0-based, file order).
    pub rule: Option<usize>,
    /// The rule's name (`meta-rule`, ...), when it has one.
    pub rule_name: Option<String>,
    /// The offending argument.
    pub argument: Option<String>,
    /// Line in the file (1-based).
    pub line: Option<usize>,
    /// Column in that line (1-based), when known: only YAML syntax errors have one (it is
    /// not part of the displayed location).
    pub column: Option<usize>,
}

impl Location {
    pub(crate) fn section(request_type: &str, line: usize) -> Self {
        Location {
            request_type: Some(request_type.to_string()),
            line: Some(line),
            ..Location::default()
        }
    }

    pub(crate) fn at_rule_set(&self, index: usize, line: usize) -> Self {
        Location {
            rule_set: Some(index),
            line: Some(line),
            ..self.clone()
        }
    }

    pub(crate) fn at_rule(&self, index: usize, line: usize) -> Self {
        Location {
            rule: Some(index),
            line: Some(line),
            ..self.clone()
        }
    }

    pub(crate) fn named(&self, rule_name: &str) -> Self {
        Location {
            rule_name: Some(rule_name.to_string()),
            ..self.clone()
        }
    }

    pub(crate) fn at_argument(&self, argument: &str, line: usize) -> Self {
        Location {
            argument: Some(argument.to_string()),
            line: Some(line),
            ..self.clone()
        }
    }

    fn is_empty(&self) -> bool {
        self.request_type.is_none() && self.line.is_none()
    }
}

impl fmt::Display for Location {
    /// `decrypt: rule set 0, rule 1 (per-profile-throttle-rule), argument 'per_days' (line 7)`
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut parts: Vec<String> = Vec::new();
        if let Some(i) = self.rule_set {
            parts.push(format!("rule set {i}"));
        }
        if let Some(i) = self.rule {
            match &self.rule_name {
                Some(name) => parts.push(format!("rule {i} ({name})")),
                None => parts.push(format!("rule {i}")),
            }
        }
        if let Some(arg) = &self.argument {
            parts.push(format!("argument '{arg}'"));
        }
        if let Some(rt) = &self.request_type {
            write!(f, "{rt}")?;
            if !parts.is_empty() {
                write!(f, ": {}", parts.join(", "))?;
            }
        } else {
            write!(f, "{}", parts.join(", "))?;
        }
        if let Some(line) = self.line {
            if self.request_type.is_some() || !parts.is_empty() {
                write!(f, " (line {line})")?;
            } else {
                write!(f, "line {line}")?;
            }
        }
        Ok(())
    }
}

/// A policy that cannot be loaded: the whole file is rejected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct LoadError(Box<(Location, LoadErrorKind)>);

impl LoadError {
    pub(crate) fn new(location: &Location, kind: LoadErrorKind) -> Self {
        LoadError(Box::new((location.clone(), kind)))
    }

    /// Where the error is.
    pub fn location(&self) -> &Location {
        &self.0.0
    }

    /// What is wrong.
    pub fn kind(&self) -> &LoadErrorKind {
        &self.0.1
    }
}

impl fmt::Display for LoadError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (location, kind) = &*self.0;
        if location.is_empty() {
            write!(f, "{kind}")
        } else {
            write!(f, "{location}: {kind}")
        }
    }
}

/// What is wrong with a policy.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LoadErrorKind {
    #[error("invalid YAML: {0}")]
    Yaml(String),
    #[error("the policy is empty (write `{{}}` for a policy that applies only the defaults)")]
    Empty,
    #[error("a policy is a mapping from request type to a list of rule sets, found a {found}")]
    NotAMapping { found: &'static str },
    #[error("unknown request type '{0}' (expected one of {types})", types = RequestType::names())]
    UnknownRequestType(String),
    #[error("a request type takes a list of rule sets, found {found}{hint}", hint = if *found == "null" { " (write [] to deny every request of this type)" } else { "" })]
    SectionNotList { found: &'static str },
    #[error("a rule set is a list of rules, found {found}{hint}", hint = if *found == "null" { " (write [] for a rule set that always approves)" } else { "" })]
    RuleSetNotList { found: &'static str },
    #[error("a rule is a mapping with `rule: <name>` and its arguments, found {found}")]
    RuleNotMapping { found: &'static str },
    #[error("the rule has no `rule: <name>`")]
    MissingRuleName,
    #[error("unknown rule '{0}' (expected one of {rules})", rules = crate::rules::RULE_NAMES.join(", "))]
    UnknownRule(String),
    #[error("unknown argument ({rule} takes {accepted})", accepted = if accepted.is_empty() { "no arguments".to_string() } else { accepted.join(", ") })]
    UnknownArgument {
        rule: &'static str,
        accepted: &'static [&'static str],
    },
    #[error("{rule} is not applicable to {request_type} requests")]
    Incompatible {
        rule: &'static str,
        request_type: RequestType,
    },
    #[error("expected {expected}, found {found}")]
    BadValue {
        expected: &'static str,
        found: String,
    },
    #[error("{0}")]
    Invalid(String),
    #[error("'{phrase}' has {count} word(s); a profile phrase needs at least 4 words")]
    TooFewWords { phrase: String, count: usize },
    #[error("day {0} is outside 0 (Monday) to 6 (Sunday)")]
    DayOutOfRange(i128),
    #[error("{0} is in both include and exclude")]
    IncludeExcludeOverlap(jiff::civil::Date),
    #[error("time_start ({start}) must be before time_end ({end})")]
    StartNotBeforeEnd { start: String, end: String },
    #[error("time_start and time_end go together: {missing} is missing")]
    OnlyOneOfStartEnd { missing: &'static str },
    #[error("invalid regex '{pattern}': {message}")]
    InvalidRegex { pattern: String, message: String },
    #[error("empty pattern")]
    EmptyPattern,
}

/// A construct whose meaning here differs from the original engine, or that is probably
/// not what the author meant. Warnings never reject a policy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Warning {
    pub location: Location,
    pub message: String,
}

impl Warning {
    pub(crate) fn new(location: &Location, message: impl Into<String>) -> Self {
        Warning {
            location: location.clone(),
            message: message.into(),
        }
    }
}

impl fmt::Display for Warning {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.location.is_empty() {
            write!(f, "{}", self.message)
        } else {
            write!(f, "{}: {}", self.location, self.message)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn location_reads_from_section_to_argument() {
        let loc = Location::section("decrypt", 1)
            .at_rule_set(0, 2)
            .at_rule(1, 5)
            .named("per-profile-throttle-rule")
            .at_argument("per_days", 7);
        assert_eq!(
            loc.to_string(),
            "decrypt: rule set 0, rule 1 (per-profile-throttle-rule), argument 'per_days' (line 7)"
        );
        let only_line = Location {
            line: Some(3),
            ..Location::default()
        };
        assert_eq!(only_line.to_string(), "line 3");
    }
}
