//! YAML loading with the typing of the original engine's loader (PyYAML, YAML 1.1:
//! `yes` is `true`, `17:00` the integer 1020), which decides both what a rule means and
//! its `rule_id` (`docs/policy.md`, *How YAML is read*). The tree keeps, for every scalar,
//! the text as written, whether it was plain, and the YAML 1.1 value.

use std::collections::HashMap;

use jiff::civil::Date;
use saphyr_parser::{Event, Parser, ScalarStyle, ScanError, Tag};

/// Deepest nesting accepted (a policy needs 4 levels; this keeps the loader's recursion bounded).
const MAX_DEPTH: usize = 64;
/// Most nodes a document may expand to (aliases are expanded by copy).
const MAX_NODES: usize = 200_000;

/// A loaded YAML node with the line it starts on (1-based).
#[derive(Clone, Debug, PartialEq)]
pub struct Node {
    pub kind: NodeKind,
    pub line: usize,
}

#[derive(Clone, Debug, PartialEq)]
pub enum NodeKind {
    Scalar(Scalar),
    Seq(Vec<Node>),
    Map(Vec<MapEntry>),
}

/// One `key: value` pair of a mapping; keys are always scalars.
#[derive(Clone, Debug, PartialEq)]
pub struct MapEntry {
    pub key: Scalar,
    pub key_line: usize,
    pub value: Node,
}

/// A scalar: its text as written, whether it was a plain (unquoted, untagged) scalar, and
/// its value as PyYAML's safe loader types it.
#[derive(Clone, Debug, PartialEq)]
pub struct Scalar {
    pub text: String,
    pub plain: bool,
    pub value: Value,
}

/// The YAML 1.1 value of a scalar.
#[derive(Clone, Debug, PartialEq)]
pub enum Value {
    Null,
    Bool(bool),
    Int(i128),
    Float(f64),
    Date(Date),
    /// A timestamp with a time of day (kept as text: no rule takes one).
    DateTime,
    Str,
}

impl Value {
    /// The YAML type name, for error messages.
    pub fn type_name(&self) -> &'static str {
        match self {
            Value::Null => "null",
            Value::Bool(_) => "boolean",
            Value::Int(_) => "integer",
            Value::Float(_) => "float",
            Value::Date(_) => "date",
            Value::DateTime => "timestamp",
            Value::Str => "string",
        }
    }
}

impl Node {
    pub fn type_name(&self) -> &'static str {
        match &self.kind {
            NodeKind::Scalar(s) => s.value.type_name(),
            NodeKind::Seq(_) => "list",
            NodeKind::Map(_) => "mapping",
        }
    }

    pub fn as_scalar(&self) -> Option<&Scalar> {
        match &self.kind {
            NodeKind::Scalar(s) => Some(s),
            _ => None,
        }
    }
}

impl Scalar {
    /// The text when the value is a string.
    pub fn as_str(&self) -> Option<&str> {
        match self.value {
            Value::Str => Some(&self.text),
            _ => None,
        }
    }
}

/// A document that could not be read as YAML.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("line {line}, column {column}: {message}")]
pub struct YamlError {
    pub line: usize,
    pub column: usize,
    pub message: String,
}

/// Something legal but probably unintended in the document (e.g. a duplicated key).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct YamlWarning {
    pub line: usize,
    pub message: String,
}

/// Reads one YAML document. `Ok(None)` when the stream holds no document (an empty file).
pub fn load(text: &str) -> Result<(Option<Node>, Vec<YamlWarning>), YamlError> {
    let mut loader = Loader {
        parser: Parser::new_from_str(text),
        anchors: HashMap::new(),
        nodes: 0,
        warnings: Vec::new(),
    };
    loader.document().map(|node| (node, loader.warnings))
}

struct Loader<'a> {
    parser: Parser<'a, saphyr_parser::StrInput<'a>>,
    anchors: HashMap<usize, Node>,
    nodes: usize,
    warnings: Vec<YamlWarning>,
}

impl<'a> Loader<'a> {
    fn next(&mut self) -> Result<(Event<'a>, usize, usize), YamlError> {
        match self.parser.next() {
            Some(Ok((event, span))) => Ok((event, span.start.line(), span.start.col() + 1)),
            Some(Err(e)) => Err(scan_error(&e)),
            None => Err(YamlError {
                line: 0,
                column: 0,
                message: "unexpected end of input".into(),
            }),
        }
    }

    fn document(&mut self) -> Result<Option<Node>, YamlError> {
        let (event, line, column) = self.next()?;
        if !matches!(event, Event::StreamStart) {
            return Err(err(line, column, "expected the start of the stream"));
        }
        let (event, line, column) = self.next()?;
        match event {
            Event::StreamEnd => return Ok(None),
            Event::DocumentStart(_) => {}
            _ => return Err(err(line, column, "expected a document")),
        }
        let (event, line, column) = self.next()?;
        let root = self.node(event, line, column, 0)?;
        let (event, line, column) = self.next()?;
        if !matches!(event, Event::DocumentEnd) {
            return Err(err(line, column, "expected the end of the document"));
        }
        let (event, line, column) = self.next()?;
        match event {
            Event::StreamEnd => Ok(Some(root)),
            _ => Err(err(
                line,
                column,
                "expected a single document in the stream, found another one",
            )),
        }
    }

    fn count_node(&mut self, line: usize, column: usize, n: usize) -> Result<(), YamlError> {
        self.nodes += n;
        if self.nodes > MAX_NODES {
            return Err(err(
                line,
                column,
                &format!("document too large: more than {MAX_NODES} nodes after expanding aliases"),
            ));
        }
        Ok(())
    }

    fn node(
        &mut self,
        event: Event<'a>,
        line: usize,
        column: usize,
        depth: usize,
    ) -> Result<Node, YamlError> {
        if depth > MAX_DEPTH {
            return Err(err(
                line,
                column,
                &format!("nesting deeper than {MAX_DEPTH} levels"),
            ));
        }
        let (node, anchor) = match event {
            Event::Scalar(text, style, anchor, tag) => {
                self.count_node(line, column, 1)?;
                let scalar = scalar(text.into_owned(), style, tag.as_deref(), line, column)?;
                (
                    Node {
                        kind: NodeKind::Scalar(scalar),
                        line,
                    },
                    anchor,
                )
            }
            Event::SequenceStart(anchor, tag) => {
                check_collection_tag(tag.as_deref(), "seq", line, column)?;
                self.count_node(line, column, 1)?;
                let mut items = Vec::new();
                loop {
                    let (event, l, c) = self.next()?;
                    if matches!(event, Event::SequenceEnd) {
                        break;
                    }
                    items.push(self.node(event, l, c, depth + 1)?);
                }
                (
                    Node {
                        kind: NodeKind::Seq(items),
                        line,
                    },
                    anchor,
                )
            }
            Event::MappingStart(anchor, tag) => {
                check_collection_tag(tag.as_deref(), "map", line, column)?;
                self.count_node(line, column, 1)?;
                let entries = self.mapping(depth)?;
                (
                    Node {
                        kind: NodeKind::Map(entries),
                        line,
                    },
                    anchor,
                )
            }
            Event::Alias(id) => {
                let node = self
                    .anchors
                    .get(&id)
                    .cloned()
                    .ok_or_else(|| err(line, column, "alias to an unknown anchor"))?;
                let size = node_count(&node);
                self.count_node(line, column, size)?;
                return Ok(node);
            }
            _ => return Err(err(line, column, "unexpected YAML event")),
        };
        if anchor != 0 {
            self.anchors.insert(anchor, node.clone());
        }
        Ok(node)
    }

    /// Reads the entries of a mapping, applying merge keys (`<<`) and PyYAML's rule for
    /// duplicated keys (the value of the last, at the position of the first).
    fn mapping(&mut self, depth: usize) -> Result<Vec<MapEntry>, YamlError> {
        let mut own: Vec<MapEntry> = Vec::new();
        let mut merged: Vec<Vec<MapEntry>> = Vec::new();
        loop {
            let (event, line, column) = self.next()?;
            if matches!(event, Event::MappingEnd) {
                break;
            }
            let key_node = self.node(event, line, column, depth + 1)?;
            let (event, vl, vc) = self.next()?;
            let value = self.node(event, vl, vc, depth + 1)?;
            let key = match key_node.kind {
                NodeKind::Scalar(s) => s,
                _ => return Err(err(line, column, "a mapping key must be a scalar")),
            };
            if key.plain && key.text == "<<" {
                merged.extend(merge_sources(value, line, column)?);
                continue;
            }
            own.push(MapEntry {
                key,
                key_line: line,
                value,
            });
        }
        // PyYAML: merged mappings first (the earlier of several wins), then the node's own keys.
        let mut all: Vec<MapEntry> = merged.into_iter().rev().flatten().collect();
        let merged_len = all.len();
        all.extend(own);
        let mut out: Vec<MapEntry> = Vec::with_capacity(all.len());
        let mut own_key: Vec<bool> = Vec::with_capacity(all.len());
        for (i, entry) in all.into_iter().enumerate() {
            let is_own = i >= merged_len;
            let id = key_identity(&entry.key);
            match out.iter().position(|e| key_identity(&e.key) == id) {
                Some(at) => {
                    if is_own && own_key[at] {
                        self.warnings.push(YamlWarning {
                            line: entry.key_line,
                            message: format!(
                                "duplicate key '{}' (first on line {}): the last value is used",
                                entry.key.text, out[at].key_line
                            ),
                        });
                    }
                    out[at].value = entry.value;
                    own_key[at] |= is_own;
                }
                None => {
                    out.push(entry);
                    own_key.push(is_own);
                }
            }
        }
        Ok(out)
    }
}

fn node_count(node: &Node) -> usize {
    match &node.kind {
        NodeKind::Scalar(_) => 1,
        NodeKind::Seq(items) => 1 + items.iter().map(node_count).sum::<usize>(),
        NodeKind::Map(entries) => {
            1 + entries
                .iter()
                .map(|e| 1 + node_count(&e.value))
                .sum::<usize>()
        }
    }
}

fn merge_sources(value: Node, line: usize, column: usize) -> Result<Vec<Vec<MapEntry>>, YamlError> {
    match value.kind {
        NodeKind::Map(entries) => Ok(vec![entries]),
        NodeKind::Seq(items) => items
            .into_iter()
            .map(|item| match item.kind {
                NodeKind::Map(entries) => Ok(entries),
                _ => Err(err(
                    item.line,
                    column,
                    "a merge key (<<) takes a mapping or a list of mappings",
                )),
            })
            .collect(),
        _ => Err(err(
            line,
            column,
            "a merge key (<<) takes a mapping or a list of mappings",
        )),
    }
}

/// Python dict identity of a key: `1`, `1.0` and `true` are the same key.
#[derive(PartialEq)]
enum KeyId<'s> {
    Null,
    Num(f64),
    Date(Date),
    Text(&'s str),
}

fn key_identity(key: &Scalar) -> KeyId<'_> {
    match &key.value {
        Value::Null => KeyId::Null,
        Value::Bool(b) => KeyId::Num(if *b { 1.0 } else { 0.0 }),
        Value::Int(i) => KeyId::Num(*i as f64),
        Value::Float(f) => KeyId::Num(*f),
        Value::Date(d) => KeyId::Date(*d),
        Value::DateTime | Value::Str => KeyId::Text(&key.text),
    }
}

fn err(line: usize, column: usize, message: &str) -> YamlError {
    YamlError {
        line,
        column,
        message: message.to_string(),
    }
}

fn scan_error(e: &ScanError) -> YamlError {
    YamlError {
        line: e.marker().line(),
        column: e.marker().col() + 1,
        message: e.info().to_string(),
    }
}

fn core_tag(tag: &Tag) -> Option<&str> {
    (tag.is_yaml_core_schema() || tag.handle == "!!").then_some(tag.suffix.as_str())
}

fn check_collection_tag(
    tag: Option<&Tag>,
    expected: &str,
    line: usize,
    column: usize,
) -> Result<(), YamlError> {
    match tag {
        None => Ok(()),
        Some(t) if core_tag(t) == Some(expected) => Ok(()),
        Some(t) => Err(err(line, column, &format!("unsupported tag {t}"))),
    }
}

fn scalar(
    text: String,
    style: ScalarStyle,
    tag: Option<&Tag>,
    line: usize,
    column: usize,
) -> Result<Scalar, YamlError> {
    let plain = style == ScalarStyle::Plain && tag.is_none();
    let value = match tag {
        None if plain => resolve_plain(&text).map_err(|m| err(line, column, &m))?,
        None => Value::Str,
        Some(t) => {
            let bad = |what: &str| err(line, column, &format!("'{text}' is not a valid {what}"));
            match core_tag(t) {
                Some("str") => Value::Str,
                Some("null") => Value::Null,
                Some("bool") => match resolve_plain(&text) {
                    Ok(v @ Value::Bool(_)) => v,
                    _ => return Err(bad("boolean")),
                },
                Some("int") => match resolve_plain(&text) {
                    Ok(v @ Value::Int(_)) => v,
                    _ => return Err(bad("integer")),
                },
                Some("float") => match resolve_plain(&text) {
                    Ok(Value::Float(f)) => Value::Float(f),
                    Ok(Value::Int(i)) => Value::Float(i as f64),
                    _ => return Err(bad("float")),
                },
                Some("timestamp") => match resolve_plain(&text) {
                    Ok(v @ (Value::Date(_) | Value::DateTime)) => v,
                    _ => return Err(bad("timestamp")),
                },
                _ => return Err(err(line, column, &format!("unsupported tag {t}"))),
            }
        }
    };
    Ok(Scalar { text, plain, value })
}

/// Types a plain scalar as PyYAML's resolver does (YAML 1.1: booleans, sexagesimal
/// integers, octal, dates). An error for a scalar PyYAML recognises but cannot build
/// (an impossible date).
pub fn resolve_plain(text: &str) -> Result<Value, String> {
    if let Some(b) = yaml11_bool(text) {
        return Ok(Value::Bool(b));
    }
    if matches!(text, "" | "~" | "null" | "Null" | "NULL") {
        return Ok(Value::Null);
    }
    if is_float(text) {
        return Ok(Value::Float(float_value(text)));
    }
    if is_int(text) {
        return int_value(text)
            .map(Value::Int)
            .ok_or_else(|| format!("integer '{text}' is out of range"));
    }
    if let Some(v) = timestamp(text)? {
        return Ok(v);
    }
    if text == "=" {
        return Err("the value indicator '=' is not a valid scalar (quote it)".into());
    }
    Ok(Value::Str)
}

fn yaml11_bool(text: &str) -> Option<bool> {
    match text {
        "yes" | "Yes" | "YES" | "true" | "True" | "TRUE" | "on" | "On" | "ON" => Some(true),
        "no" | "No" | "NO" | "false" | "False" | "FALSE" | "off" | "Off" | "OFF" => Some(false),
        _ => None,
    }
}

fn strip_sign(text: &str) -> &str {
    text.strip_prefix(['+', '-']).unwrap_or(text)
}

fn all(s: &str, f: impl Fn(u8) -> bool) -> bool {
    s.bytes().all(f)
}

fn digits_(s: &str) -> bool {
    all(s, |b| b.is_ascii_digit() || b == b'_')
}

/// `[0-5]?[0-9]` components after the first of a sexagesimal number.
fn sexagesimal_tail(parts: &[&str]) -> bool {
    !parts.is_empty()
        && parts.iter().all(|p| {
            let b = p.as_bytes();
            match b.len() {
                1 => b[0].is_ascii_digit(),
                2 => (b'0'..=b'5').contains(&b[0]) && b[1].is_ascii_digit(),
                _ => false,
            }
        })
}

fn is_int(text: &str) -> bool {
    let body = strip_sign(text);
    if let Some(rest) = body.strip_prefix("0b") {
        return !rest.is_empty() && all(rest, |b| b == b'0' || b == b'1' || b == b'_');
    }
    if let Some(rest) = body.strip_prefix("0x") {
        return !rest.is_empty() && all(rest, |b| b.is_ascii_hexdigit() || b == b'_');
    }
    if body == "0" {
        return true;
    }
    if let Some(rest) = body.strip_prefix('0') {
        return !rest.is_empty() && all(rest, |b| (b'0'..=b'7').contains(&b) || b == b'_');
    }
    let parts: Vec<&str> = body.split(':').collect();
    let first = parts[0].as_bytes();
    if first.is_empty() || !(b'1'..=b'9').contains(&first[0]) || !digits_(parts[0]) {
        return false;
    }
    parts.len() == 1 || sexagesimal_tail(&parts[1..])
}

fn int_value(text: &str) -> Option<i128> {
    let negative = text.starts_with('-');
    let cleaned: String = strip_sign(text).chars().filter(|c| *c != '_').collect();
    let magnitude = if cleaned == "0" {
        0
    } else if let Some(b) = cleaned.strip_prefix("0b") {
        i128::from_str_radix(b, 2).ok()?
    } else if let Some(h) = cleaned.strip_prefix("0x") {
        i128::from_str_radix(h, 16).ok()?
    } else if let Some(o) = cleaned.strip_prefix('0') {
        i128::from_str_radix(o, 8).ok()?
    } else if cleaned.contains(':') {
        let mut v: i128 = 0;
        for part in cleaned.split(':') {
            v = v.checked_mul(60)?.checked_add(part.parse::<i128>().ok()?)?;
        }
        v
    } else {
        cleaned.parse::<i128>().ok()?
    };
    Some(if negative { -magnitude } else { magnitude })
}

fn is_float(text: &str) -> bool {
    let body = strip_sign(text);
    if matches!(body, ".inf" | ".Inf" | ".INF") {
        return true;
    }
    if matches!(text, ".nan" | ".NaN" | ".NAN") {
        return true;
    }
    // [0-9][0-9_]*(:[0-5]?[0-9])+\.[0-9_]*  (sexagesimal float)
    if let Some((head, frac)) = body.split_once('.') {
        let parts: Vec<&str> = head.split(':').collect();
        if parts.len() > 1 {
            return !parts[0].is_empty()
                && parts[0].as_bytes()[0].is_ascii_digit()
                && digits_(parts[0])
                && sexagesimal_tail(&parts[1..])
                && digits_(frac);
        }
    }
    // [-+]?([0-9][0-9_]*)\.[0-9_]*([eE][-+][0-9]+)?  or  \.[0-9][0-9_]*([eE][-+][0-9]+)?
    let (mantissa, exponent) = match body.find(['e', 'E']) {
        Some(i) => (&body[..i], Some(&body[i + 1..])),
        None => (body, None),
    };
    if let Some(exp) = exponent {
        let digits = exp.strip_prefix(['+', '-']);
        match digits {
            Some(d) if !d.is_empty() && all(d, |b| b.is_ascii_digit()) => {}
            _ => return false,
        }
    }
    let Some((int_part, frac)) = mantissa.split_once('.') else {
        return false;
    };
    if int_part.is_empty() {
        // only the unsigned form `.5` is allowed without an integer part
        return text == body
            && !frac.is_empty()
            && frac.as_bytes()[0].is_ascii_digit()
            && digits_(frac);
    }
    int_part.as_bytes()[0].is_ascii_digit() && digits_(int_part) && digits_(frac)
}

fn float_value(text: &str) -> f64 {
    let lower: String = text
        .chars()
        .filter(|c| *c != '_')
        .collect::<String>()
        .to_lowercase();
    let negative = lower.starts_with('-');
    let body = strip_sign(&lower);
    let magnitude = if body == ".inf" {
        f64::INFINITY
    } else if body == ".nan" {
        f64::NAN
    } else if body.contains(':') {
        let mut v = 0.0;
        for part in body.split(':') {
            v = v * 60.0 + part.parse::<f64>().unwrap_or(0.0);
        }
        v
    } else {
        body.parse::<f64>().unwrap_or(f64::NAN)
    };
    if negative { -magnitude } else { magnitude }
}

/// `YYYY-MM-DD` → a date; `YYYY-M-D[Tt ]h:mm:ss[.f][ zone]` → a timestamp.
fn timestamp(text: &str) -> Result<Option<Value>, String> {
    let b = text.as_bytes();
    let is_digit = |i: usize| b.get(i).is_some_and(|c| c.is_ascii_digit());
    if b.len() == 10
        && (0..4).all(is_digit)
        && b[4] == b'-'
        && is_digit(5)
        && is_digit(6)
        && b[7] == b'-'
        && is_digit(8)
        && is_digit(9)
    {
        let year: i16 = text[0..4]
            .parse()
            .map_err(|_| format!("invalid date '{text}'"))?;
        let month: i8 = text[5..7]
            .parse()
            .map_err(|_| format!("invalid date '{text}'"))?;
        let day: i8 = text[8..10]
            .parse()
            .map_err(|_| format!("invalid date '{text}'"))?;
        return Date::new(year, month, day)
            .map(|d| Some(Value::Date(d)))
            .map_err(|_| format!("invalid date '{text}'"));
    }
    if is_datetime(text) {
        return Ok(Some(Value::DateTime));
    }
    Ok(None)
}

fn is_datetime(text: &str) -> bool {
    // year-month-day
    let mut rest = text;
    let take_digits = |s: &mut &str, min: usize, max: usize| -> bool {
        let n = s.bytes().take_while(|c| c.is_ascii_digit()).count();
        if n < min || n > max {
            return false;
        }
        *s = &s[n..];
        true
    };
    let take = |s: &mut &str, c: char| -> bool {
        match s.strip_prefix(c) {
            Some(r) => {
                *s = r;
                true
            }
            None => false,
        }
    };
    if !(take_digits(&mut rest, 4, 4)
        && take(&mut rest, '-')
        && take_digits(&mut rest, 1, 2)
        && take(&mut rest, '-')
        && take_digits(&mut rest, 1, 2))
    {
        return false;
    }
    let sep = rest
        .bytes()
        .take_while(|c| *c == b' ' || *c == b'\t')
        .count();
    if sep > 0 {
        rest = &rest[sep..];
    } else if !(take(&mut rest, 'T') || take(&mut rest, 't')) {
        return false;
    }
    if !(take_digits(&mut rest, 1, 2)
        && take(&mut rest, ':')
        && take_digits(&mut rest, 2, 2)
        && take(&mut rest, ':')
        && take_digits(&mut rest, 2, 2))
    {
        return false;
    }
    if take(&mut rest, '.') {
        take_digits(&mut rest, 0, usize::MAX);
    }
    rest = rest.trim_start_matches([' ', '\t']);
    if rest.is_empty() || rest == "Z" {
        return true;
    }
    if !(take(&mut rest, '+') || take(&mut rest, '-')) {
        return false;
    }
    if !take_digits(&mut rest, 1, 2) {
        return false;
    }
    if take(&mut rest, ':') && !take_digits(&mut rest, 2, 2) {
        return false;
    }
    rest.is_empty()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn value(text: &str) -> Value {
        resolve_plain(text).expect("resolves")
    }

    #[test]
    fn yaml11_scalars_are_typed_like_pyyaml() {
        assert_eq!(value("yes"), Value::Bool(true));
        assert_eq!(value("Off"), Value::Bool(false));
        assert_eq!(value("yEs"), Value::Str);
        assert_eq!(value("y"), Value::Str);
        assert_eq!(value("17:00"), Value::Int(1020));
        assert_eq!(value("17:00:30"), Value::Int(61230));
        assert_eq!(value("9:00"), Value::Int(540));
        assert_eq!(value("09:00"), Value::Str);
        assert_eq!(value("9:00am"), Value::Str);
        assert_eq!(value("09:00+04:00"), Value::Str);
        assert_eq!(value("010"), Value::Int(8));
        assert_eq!(value("08"), Value::Str);
        assert_eq!(value("0x1F"), Value::Int(31));
        assert_eq!(value("0b101"), Value::Int(5));
        assert_eq!(value("1_000"), Value::Int(1000));
        assert_eq!(value("-1"), Value::Int(-1));
        assert_eq!(value("+7"), Value::Int(7));
        assert_eq!(value("1.5"), Value::Float(1.5));
        assert_eq!(value("1e3"), Value::Str);
        assert_eq!(value("1.0e+3"), Value::Float(1000.0));
        assert_eq!(value(".5"), Value::Float(0.5));
        assert_eq!(value("~"), Value::Null);
        assert_eq!(value(""), Value::Null);
        assert_eq!(
            value("2022-03-07"),
            Value::Date(Date::new(2022, 3, 7).expect("date"))
        );
        assert_eq!(value("2022-03-07 10:00:00"), Value::DateTime);
        assert_eq!(value("2022-3-7"), Value::Str);
        assert!(resolve_plain("2022-02-30").is_err());
    }

    #[test]
    fn quoted_scalars_are_strings() {
        let (node, _) = load("a: 'yes'\nb: \"17:00\"\nc: yes\n").expect("loads");
        let NodeKind::Map(entries) = node.expect("document").kind else {
            panic!("not a map")
        };
        let values: Vec<&Value> = entries
            .iter()
            .map(|e| &e.value.as_scalar().expect("scalar").value)
            .collect();
        assert_eq!(values, [&Value::Str, &Value::Str, &Value::Bool(true)]);
    }

    #[test]
    fn duplicate_keys_keep_first_position_and_last_value() {
        let (node, warnings) = load("a: 1\nb: 2\na: 3\n").expect("loads");
        let NodeKind::Map(entries) = node.expect("document").kind else {
            panic!("not a map")
        };
        assert_eq!(entries.len(), 2);
        assert_eq!(entries[0].key.text, "a");
        assert_eq!(
            entries[0].value.as_scalar().expect("scalar").value,
            Value::Int(3)
        );
        assert_eq!(warnings.len(), 1);
        assert_eq!(warnings[0].line, 3);
    }

    #[test]
    fn merge_keys_and_aliases_expand() {
        let text = "base: &b {x: 1, y: 2}\nm:\n  <<: *b\n  y: 3\n";
        let (node, warnings) = load(text).expect("loads");
        assert!(warnings.is_empty());
        let NodeKind::Map(entries) = node.expect("document").kind else {
            panic!("not a map")
        };
        let NodeKind::Map(m) = &entries[1].value.kind else {
            panic!("not a map")
        };
        let pairs: Vec<(&str, &Value)> = m
            .iter()
            .map(|e| {
                (
                    e.key.text.as_str(),
                    &e.value.as_scalar().expect("scalar").value,
                )
            })
            .collect();
        assert_eq!(pairs, [("x", &Value::Int(1)), ("y", &Value::Int(3))]);
    }

    #[test]
    fn empty_and_multi_document_streams() {
        assert_eq!(load("").expect("loads").0, None);
        assert_eq!(load("# only a comment\n").expect("loads").0, None);
        assert!(load("a: 1\n---\nb: 2\n").is_err());
    }

    #[test]
    fn alias_bombs_are_bounded() {
        let mut text = String::from("a0: &a0 [x, x, x, x, x, x, x, x, x, x]\n");
        for i in 1..10 {
            let prev = i - 1;
            text.push_str(&format!(
                "a{i}: &a{i} [*a{prev}, *a{prev}, *a{prev}, *a{prev}, *a{prev}, *a{prev}, *a{prev}, *a{prev}, *a{prev}, *a{prev}]\n"
            ));
        }
        let e = load(&text).expect_err("too large");
        assert!(e.message.contains("too large"), "{e}");
    }

    #[test]
    fn errors_carry_lines() {
        let e = load("a: [1, 2\nb: 3\n").expect_err("syntax error");
        assert!(e.line >= 1, "{e:?}");
    }
}
