//! Canonical YAML for a policy: request types and rules in file order, `rule` first,
//! then the arguments as written, then `rule_id`. Every scalar is written so that the
//! YAML 1.1 loader reads back the same value (and so the same rule id).

use std::fmt::Write;

use crate::policy::CompiledRule;
use crate::request::RequestType;
use crate::yaml::{Node, NodeKind, Scalar, Value, resolve_plain};

pub(crate) fn policy_yaml(sections: &[(RequestType, Vec<Vec<&CompiledRule>>)]) -> String {
    if sections.is_empty() {
        return "{}\n".to_string();
    }
    let mut out = String::new();
    for (request_type, sets) in sections {
        if sets.is_empty() {
            let _ = writeln!(out, "{request_type}: []");
            continue;
        }
        let _ = writeln!(out, "{request_type}:");
        for set in sets {
            if set.is_empty() {
                out.push_str("  - []\n");
                continue;
            }
            for (i, rule) in set.iter().enumerate() {
                out.push_str(if i == 0 { "  - - " } else { "    - " });
                let _ = writeln!(out, "rule: {}", rule.name);
                for entry in &rule.source {
                    if matches!(entry.key.as_str(), Some("rule" | "rule_id")) {
                        continue;
                    }
                    let _ = write!(out, "      {}:", scalar(&entry.key));
                    value(&mut out, &entry.value, 8);
                }
                let _ = writeln!(out, "      rule_id: {}", string(&rule.id));
            }
        }
    }
    out
}

/// Writes ` value\n` for a scalar, or a block list / mapping indented by `indent`.
fn value(out: &mut String, node: &Node, indent: usize) {
    match &node.kind {
        NodeKind::Scalar(s) => {
            let _ = writeln!(out, " {}", scalar(s));
        }
        NodeKind::Seq(items) if items.is_empty() => out.push_str(" []\n"),
        NodeKind::Map(entries) if entries.is_empty() => out.push_str(" {}\n"),
        NodeKind::Seq(items) => {
            out.push('\n');
            for item in items {
                let _ = write!(out, "{:indent$}-", "");
                value(out, item, indent + 2);
            }
        }
        NodeKind::Map(entries) => {
            out.push('\n');
            for e in entries {
                let _ = write!(out, "{:indent$}{}:", "", scalar(&e.key));
                value(out, &e.value, indent + 2);
            }
        }
    }
}

fn scalar(s: &Scalar) -> String {
    if plain_safe(&s.text) && resolve_plain(&s.text).is_ok_and(|v| same_value(&v, &s.value)) {
        return s.text.clone();
    }
    let quoted = quote(&s.text);
    match &s.value {
        Value::Str => quoted,
        Value::Null => "null".to_string(),
        Value::Bool(b) => b.to_string(),
        Value::Int(i) => i.to_string(),
        Value::Float(_) => format!("!!float {quoted}"),
        Value::Date(d) => d.to_string(),
        Value::DateTime => format!("!!timestamp {quoted}"),
    }
}

fn same_value(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::Float(x), Value::Float(y)) => x == y || (x.is_nan() && y.is_nan()),
        _ => a == b,
    }
}

/// A string that can stand unquoted in block context and reads back as the same text.
fn plain_safe(text: &str) -> bool {
    let Some(first) = text.chars().next() else {
        return false;
    };
    if text.starts_with(char::is_whitespace) || text.ends_with(char::is_whitespace) {
        return false;
    }
    if "-?:,[]{}#&*!|>'\"%@`".contains(first) {
        // `-x`, `?x`, `:x` are plain in YAML, but quoting them is always safe
        return false;
    }
    !text.contains(": ")
        && !text.contains(" #")
        && !text.ends_with(':')
        && text.chars().all(|c| !c.is_control() && c != '\u{feff}')
}

fn quote(text: &str) -> String {
    if text.chars().all(|c| !c.is_control() && c != '\u{feff}') {
        return format!("'{}'", text.replace('\'', "''"));
    }
    let mut out = String::from("\"");
    for c in text.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\t' => out.push_str("\\t"),
            '\r' => out.push_str("\\r"),
            c if c.is_control() || c == '\u{feff}' => {
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// A rule id as a scalar: quoted when it would not read back as the same string.
fn string(text: &str) -> String {
    scalar(&Scalar {
        text: text.to_string(),
        plain: false,
        value: Value::Str,
    })
}
