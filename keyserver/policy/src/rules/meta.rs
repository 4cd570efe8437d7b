//! `meta-rule`: approve by file path or metadata (`docs/policy.md`, *`meta-rule`*).

use std::cell::RefCell;

use fancy_regex::{Expr, Regex, RegexBuilder};

use super::{Args, RuleError};
use crate::error::{LoadError, LoadErrorKind, Warning};
use crate::request::MetaInfo;

pub const ARGS: &[&str] = &["paths", "regexes", "case_sensitive", "require_complete"];

/// Bound on backtracking for look-around patterns; a pattern that hits it errors (deny).
const BACKTRACK_LIMIT: usize = 100_000;

#[derive(Debug)]
pub struct MetaRule {
    patterns: Vec<Pattern>,
    has_normal: bool,
    case_sensitive: bool,
    require_complete: bool,
}

#[derive(Debug)]
struct Pattern {
    regex: Regex,
    inverted: bool,
}

thread_local! {
    /// The normalised metadata string, reused across evaluations (no allocation per request).
    static SCRATCH: RefCell<String> = const { RefCell::new(String::new()) };
}

impl MetaRule {
    pub fn compile(args: &Args<'_>, warnings: &mut Vec<Warning>) -> Result<Self, LoadError> {
        let case_sensitive = args
            .get("case_sensitive")
            .map(|a| a.bool())
            .transpose()?
            .unwrap_or(false);
        let require_complete = args
            .get("require_complete")
            .map(|a| a.bool())
            .transpose()?
            .unwrap_or(false);
        let mut patterns = Vec::new();
        for (name, is_path) in [("regexes", false), ("paths", true)] {
            let Some(arg) = args.get(name) else { continue };
            for item in arg.list("a list of patterns")? {
                let text = item.string("a pattern (a string)")?;
                let (inverted, body) = match text.strip_prefix('!') {
                    Some(rest) => (true, rest),
                    None => (false, text),
                };
                if body.is_empty() {
                    return Err(item.error(LoadErrorKind::EmptyPattern));
                }
                let source = if is_path {
                    if body.starts_with('*') && body.len() > 1 {
                        warnings.push(Warning::new(
                            &item.loc,
                            format!(
                                "path '{text}' must now match to the end of the metadata; the original \
                                 engine did not anchor it, so it also approved e.g. '{}x' and '{}/more'",
                                &body[1..],
                                &body[1..]
                            ),
                        ));
                    }
                    path_regex(body)
                } else {
                    body.to_string()
                };
                let regex = RegexBuilder::new(&source)
                    .case_insensitive(!case_sensitive)
                    .backtrack_limit(BACKTRACK_LIMIT)
                    .build()
                    .map_err(|e| {
                        item.error(LoadErrorKind::InvalidRegex {
                            pattern: text.to_string(),
                            message: e.to_string(),
                        })
                    })?;
                if Expr::parse_tree(&source).is_ok_and(|tree| reversed_repeat(&tree.expr)) {
                    return Err(item.error(LoadErrorKind::InvalidRegex {
                        pattern: text.to_string(),
                        message: "min repeat greater than max repeat".to_string(),
                    }));
                }
                patterns.push(Pattern { regex, inverted });
            }
        }
        let inverted = patterns.iter().filter(|p| p.inverted).count();
        if inverted > 0 && patterns.len() > 1 {
            warnings.push(Warning::new(
                args.loc(),
                "inverted patterns (!) now always exclude, in any order; the original engine \
                 let a non-matching inverted pattern approve on its own and ignored one placed \
                 after a matching pattern",
            ));
        }
        Ok(MetaRule {
            has_normal: patterns.len() > inverted,
            patterns,
            case_sensitive,
            require_complete,
        })
    }

    pub fn approves(&self, metas: &[MetaInfo]) -> Result<bool, RuleError> {
        if metas.is_empty() || self.patterns.is_empty() {
            return Ok(false);
        }
        SCRATCH.with(|cell| {
            let mut norm = cell.borrow_mut();
            for meta in metas {
                if self.require_complete && !meta.complete {
                    return Ok(false);
                }
                if meta.meta.is_empty() || meta.meta.starts_with('/') {
                    // malformed: metadata is a path written without a leading '/' (the
                    // original engine also denied an empty one)
                    return Ok(false);
                }
                norm.clear();
                if meta.complete {
                    norm.push('/');
                }
                if self.case_sensitive {
                    norm.push_str(&meta.meta);
                } else if meta.meta.is_ascii() {
                    norm.extend(
                        meta.meta
                            .bytes()
                            .map(|b| char::from(b.to_ascii_lowercase())),
                    );
                } else {
                    norm.push_str(&meta.meta.to_lowercase());
                }
                if !self.entry_approved(&norm)? {
                    return Ok(false);
                }
            }
            Ok(true)
        })
    }

    fn entry_approved(&self, norm: &str) -> Result<bool, RuleError> {
        let mut matched_normal = false;
        for p in &self.patterns {
            if p.inverted || !matched_normal {
                let hit = p
                    .regex
                    .is_match(norm)
                    .map_err(|e| RuleError(format!("meta-rule pattern failed: {e}")))?;
                if hit && p.inverted {
                    return Ok(false);
                }
                matched_normal |= hit;
            }
        }
        Ok(matched_normal || !self.has_normal)
    }
}

/// Whether a pattern repeats `{m,n}` with m > n: Python's `re` rejects it, fancy-regex
/// accepts it with no sensible meaning.
fn reversed_repeat(expr: &Expr) -> bool {
    match expr {
        Expr::Repeat { lo, hi, .. } if lo > hi => true,
        _ => expr.children_iter().any(reversed_repeat),
    }
}

/// The regex a path pattern stands for (`docs/policy.md`, `meta-rule`, path patterns).
fn path_regex(path: &str) -> String {
    let component = |p: &str| fancy_regex::escape(p).replace("\\*", "[^/]*");
    if let Some(rest) = path.strip_prefix('*') {
        // the leading `*` may span components; the rest must end the string
        format!("{}$", component(rest))
    } else if path.starts_with('/') {
        let trimmed = path.trim_end_matches('/');
        if trimmed.is_empty() {
            // `/` alone: every complete (rooted) entry, and never an empty partial one
            return "^/".to_string();
        }
        format!("^{}(?:/|$)", component(trimmed))
    } else if path.contains('/') {
        if path.ends_with('/') {
            format!("/{}/", component(path.trim_end_matches('/')))
        } else {
            format!("/{}(?:/|$)", component(path))
        }
    } else {
        format!("(?:^|/){}$", component(path))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn matches(path: &str, norm: &str) -> bool {
        Regex::new(&path_regex(path))
            .expect("compiles")
            .is_match(norm)
            .expect("matches")
    }

    #[test]
    fn path_forms() {
        assert!(matches("/", "/a/b"));
        assert!(!matches("/", "a/b"));
        assert!(!matches("/", ""));
        assert!(matches("/root/sub", "/root/sub"));
        assert!(matches("/root/sub/", "/root/sub/x"));
        assert!(!matches("/root/sub", "/root/subxx"));
        assert!(matches("sub/path", "/x/sub/path"));
        assert!(matches("sub/path", "/x/sub/path/y"));
        assert!(!matches("sub/path", "/x/sub/path.txt"));
        assert!(!matches("sub/path", "sub/path"));
        assert!(matches("sub/", "/x/sub/y"));
        assert!(!matches("sub/", "/x/sub"));
        assert!(matches("basename.*", "/a/basename.txt"));
        assert!(matches("baseonly", "baseonly"));
        assert!(!matches("baseonly", "/a/xbaseonly"));
        assert!(matches("*.pdf", "/a/b/c.pdf"));
        assert!(!matches("*.pdf", "/a/b/c.pdfx"));
        assert!(!matches("*.pdf", "/a/b.pdf/c"));
        assert!(matches("/tax*", "/taxes/x"));
        assert!(!matches("/a*/c", "/a/b/c"));
    }
}
