//! Rule ids as the original engine generated them, so persistent quota data keyed by rule
//! id survives a migration and a reload when a rule is unchanged (`docs/policy.md`, *Rule
//! ids*): the lowercase hex MD5 of the entry as Python's
//! `json.dumps(entry, sort_keys=True, separators=(",", ":"))` writes it, `.n` for the n-th
//! occurrence of an id over the whole policy.

use std::collections::HashMap;
use std::fmt::Write;

use md5::{Digest, Md5};

use crate::yaml::{MapEntry, Node, NodeKind, Scalar, Value};

/// Hands out rule ids in file order.
#[derive(Debug, Default)]
pub struct RuleIdGenerator {
    seen: HashMap<String, u32>,
}

impl RuleIdGenerator {
    /// Records an id written in the file; it is kept as written.
    pub fn explicit(&mut self, id: &str) {
        *self.seen.entry(id.to_string()).or_insert(0) += 1;
    }

    /// The id of an unnamed rule.
    pub fn generate(&mut self, entry: &[MapEntry]) -> String {
        let hash = entry_hash(entry);
        let id = match self.seen.get_mut(&hash) {
            Some(n) => {
                *n += 1;
                format!("{hash}.{n}")
            }
            None => hash,
        };
        *self.seen.entry(id.clone()).or_insert(0) += 1;
        id
    }
}

/// MD5 of the entry's Python-compatible JSON.
pub fn entry_hash(entry: &[MapEntry]) -> String {
    let mut json = String::new();
    write_map(&mut json, entry);
    hex::encode(Md5::digest(json.as_bytes()))
}

fn write_node(out: &mut String, node: &Node) {
    match &node.kind {
        NodeKind::Scalar(s) => write_scalar(out, s),
        NodeKind::Seq(items) => {
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                write_node(out, item);
            }
            out.push(']');
        }
        NodeKind::Map(entries) => write_map(out, entries),
    }
}

fn write_map(out: &mut String, entries: &[MapEntry]) {
    let mut sorted: Vec<&MapEntry> = entries.iter().collect();
    sorted.sort_by_key(|e| key_text(&e.key));
    out.push('{');
    for (i, e) in sorted.into_iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        write_str(out, &key_text(&e.key));
        out.push(':');
        write_node(out, &e.value);
    }
    out.push('}');
}

/// A key as Python's json module writes it (non-string keys become strings).
fn key_text(key: &Scalar) -> String {
    match &key.value {
        Value::Str | Value::DateTime => key.text.clone(),
        _ => {
            let mut s = String::new();
            write_scalar(&mut s, key);
            s.trim_matches('"').to_string()
        }
    }
}

fn write_scalar(out: &mut String, s: &Scalar) {
    match &s.value {
        Value::Null => out.push_str("null"),
        Value::Bool(true) => out.push_str("true"),
        Value::Bool(false) => out.push_str("false"),
        Value::Int(i) => {
            let _ = write!(out, "{i}");
        }
        Value::Float(f) => out.push_str(&python_float(*f)),
        // Python's json cannot write a date (the original failed to load such a rule
        // without an explicit rule_id); it is hashed here as its ISO text.
        Value::Date(d) => write_str(out, &d.to_string()),
        Value::DateTime | Value::Str => write_str(out, &s.text),
    }
}

fn python_float(f: f64) -> String {
    if f.is_nan() {
        "NaN".into()
    } else if f.is_infinite() {
        if f > 0.0 {
            "Infinity".into()
        } else {
            "-Infinity".into()
        }
    } else if f == f.trunc() && f.abs() < 1e16 {
        format!("{f:.1}")
    } else {
        format!("{f:?}")
    }
}

/// A JSON string with every non-ASCII character escaped as `\uXXXX` (surrogate pairs
/// above U+FFFF), as Python's `ensure_ascii` does.
fn write_str(out: &mut String, s: &str) {
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '\u{8}' => out.push_str("\\b"),
            '\u{c}' => out.push_str("\\f"),
            ' '..='~' => out.push(c),
            _ => {
                let mut buf = [0u16; 2];
                for unit in c.encode_utf16(&mut buf) {
                    let _ = write!(out, "\\u{unit:04x}");
                }
            }
        }
    }
    out.push('"');
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::yaml;

    fn rule(text: &str) -> Vec<MapEntry> {
        match yaml::load(text).expect("loads").0.expect("document").kind {
            NodeKind::Map(entries) => entries,
            _ => panic!("not a map"),
        }
    }

    fn json(text: &str) -> String {
        let mut out = String::new();
        write_map(&mut out, &rule(text));
        out
    }

    #[test]
    fn json_matches_python() {
        assert_eq!(
            json("rule: per-profile-throttle-rule\nper_day: 30\npersistent: True\n"),
            r#"{"per_day":30,"persistent":true,"rule":"per-profile-throttle-rule"}"#
        );
        assert_eq!(
            json("rule: meta-rule\npaths: [/caf\u{e9}, \"a\\\"b\", \"\u{1F600}\"]\n"),
            r#"{"paths":["/caf\u00e9","a\"b","\ud83d\ude00"],"rule":"meta-rule"}"#
        );
        assert_eq!(
            json("rule: x\nt: 17:00\nd: off\n"),
            r#"{"d":false,"rule":"x","t":1020}"#
        );
        assert_eq!(
            json("rule: x\nc: \"\\x7f\\x01\"\n"),
            r#"{"c":"\u007f\u0001","rule":"x"}"#
        );
    }

    #[test]
    fn known_hash() {
        // md5 of {"per_day":30,"persistent":true,"rule":"per-profile-throttle-rule"}
        let entry = rule("rule: per-profile-throttle-rule\nper_day: 30\npersistent: true\n");
        let expected = hex::encode(Md5::digest(
            br#"{"per_day":30,"persistent":true,"rule":"per-profile-throttle-rule"}"#,
        ));
        assert_eq!(entry_hash(&entry), expected);
    }

    #[test]
    fn numbering_counts_explicit_ids() {
        let entry = rule("rule: approve-rule\n");
        let h = entry_hash(&entry);
        let mut g = RuleIdGenerator::default();
        g.explicit(&h);
        assert_eq!(g.generate(&entry), format!("{h}.2"));
        assert_eq!(g.generate(&entry), format!("{h}.3"));
        let mut g = RuleIdGenerator::default();
        assert_eq!(g.generate(&entry), h);
        assert_eq!(g.generate(&entry), format!("{h}.2"));
    }
}
