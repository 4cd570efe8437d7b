//! `kss policy eval`: one JSON line in, one JSON line out, in order.
//!
//! In: a request `{"type":"decrypt","profile_id":"<hex>","profile_words":[..],
//! "device_id":"<hex>","auth_meta":[{"meta":"a/b","complete":true}],
//! "cryptographic_id":"<hex>","at":"<RFC 3339>"}`, or an operation
//! `{"op":"quota_clear"[,"profile_id":"<hex>"]}` / `{"op":"quota_list","at":"<RFC 3339>"}`.
//! Out: `{"approved":true,"rule_set":0}`, `{"ok":true}`, `{"at_quota":[..]}`, or
//! `{"error":"<what is wrong>"}` — and evaluation goes on. Unknown fields are ignored (so
//! exported audit records can be replayed); absent optional fields are empty; an absent
//! `at` means now.

use std::borrow::Cow;
use std::io::{self, BufRead, Write};

use jiff::Timestamp;
use jiff::tz::TimeZone;
use kss_policy::{Decision, MetaInfo, Policy, QuotaStore, QuotaWindow, Request, RequestType};
use serde::Deserialize;
use serde::de::{DeserializeSeed, Error as _, IgnoredAny, MapAccess, SeqAccess, Visitor};

/// The scalar fields of a line; its lists are read straight into the request's reused
/// buffers by [`LineSeed`].
#[derive(Default)]
struct Line<'a> {
    request_type: Option<Text<'a>>,
    op: Option<Text<'a>>,
    profile_id: Option<Text<'a>>,
    device_id: Option<Text<'a>>,
    cryptographic_id: Option<Text<'a>>,
    at: Option<Text<'a>>,
}

/// Reads one line's JSON object in a single pass: scalar fields into a [`Line`], the
/// `profile_words` and `auth_meta` lists into `request`; unknown fields are skipped.
struct LineSeed<'r> {
    request: &'r mut Request,
}

impl<'de> DeserializeSeed<'de> for LineSeed<'_> {
    type Value = Line<'de>;

    fn deserialize<D: serde::Deserializer<'de>>(
        self,
        deserializer: D,
    ) -> Result<Line<'de>, D::Error> {
        deserializer.deserialize_map(self)
    }
}

impl<'de> Visitor<'de> for LineSeed<'_> {
    type Value = Line<'de>;

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("a JSON object")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Line<'de>, A::Error> {
        let mut line = Line::default();
        let (mut has_words, mut has_meta) = (false, false);
        while let Some(key) = map.next_key::<Text<'de>>()? {
            match &*key {
                "type" => line.request_type = map.next_value()?,
                "op" => line.op = map.next_value()?,
                "profile_id" => line.profile_id = map.next_value()?,
                "device_id" => line.device_id = map.next_value()?,
                "cryptographic_id" => line.cryptographic_id = map.next_value()?,
                "at" => line.at = map.next_value()?,
                "profile_words" => {
                    has_words = true;
                    map.next_value_seed(ListSeed::new(
                        &mut self.request.profile_words,
                        |slot: &mut String, word: Text<'_>| {
                            slot.clear();
                            slot.push_str(&word);
                        },
                    ))
                    .map_err(|e| A::Error::custom(format_args!("\"profile_words\": {e}")))?;
                }
                "auth_meta" => {
                    has_meta = true;
                    map.next_value_seed(ListSeed::new(
                        &mut self.request.auth_meta,
                        |slot: &mut MetaInfo, m: MetaLine<'_>| {
                            slot.meta.clear();
                            slot.meta.push_str(&m.meta);
                            slot.complete = m.complete;
                        },
                    ))
                    .map_err(|e| A::Error::custom(format_args!("\"auth_meta\": {e}")))?;
                }
                _ => {
                    map.next_value::<IgnoredAny>()?;
                }
            }
        }
        if !has_words {
            self.request.profile_words.clear();
        }
        if !has_meta {
            self.request.auth_meta.clear();
        }
        Ok(line)
    }
}

#[derive(Deserialize)]
struct MetaLine<'a> {
    #[serde(borrow)]
    meta: Text<'a>,
    #[serde(default)]
    complete: bool,
}

/// A JSON string borrowed from the line when it has no escapes (serde's own `Cow`
/// impl always copies inside collections and options).
struct Text<'a>(Cow<'a, str>);

impl std::ops::Deref for Text<'_> {
    type Target = str;

    fn deref(&self) -> &str {
        &self.0
    }
}

impl<'de: 'a, 'a> Deserialize<'de> for Text<'a> {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct TextVisitor;

        impl<'de> serde::de::Visitor<'de> for TextVisitor {
            type Value = Cow<'de, str>;

            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a string")
            }

            fn visit_borrowed_str<E: serde::de::Error>(
                self,
                v: &'de str,
            ) -> Result<Self::Value, E> {
                Ok(Cow::Borrowed(v))
            }

            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<Self::Value, E> {
                Ok(Cow::Owned(v.to_string()))
            }
        }

        deserializer.deserialize_str(TextVisitor).map(Text)
    }
}

/// What one line produced.
enum Output {
    Decision(Decision),
    Ok,
    AtQuota(Vec<Vec<u8>>),
}

/// Evaluates lines against one policy and one quota store; buffers are reused.
pub struct Evaluator<'p> {
    policy: &'p Policy,
    tz: &'p TimeZone,
    store: &'p dyn QuotaStore,
    request: Request,
}

impl<'p> Evaluator<'p> {
    pub fn new(policy: &'p Policy, tz: &'p TimeZone, store: &'p dyn QuotaStore) -> Self {
        Evaluator {
            policy,
            tz,
            store,
            request: Request::new(RequestType::Decrypt),
        }
    }

    /// Reads lines until the end of `input`, writing one line each to `output`.
    pub fn run(&mut self, mut input: impl BufRead, output: impl Write) -> io::Result<()> {
        let mut out = io::BufWriter::with_capacity(1 << 16, output);
        // A line split across two reads of the input buffer is gathered here; whole lines
        // are evaluated where they lie in the buffer.
        let mut partial: Vec<u8> = Vec::new();
        loop {
            let buf = input.fill_buf()?;
            if buf.is_empty() {
                if !partial.is_empty() {
                    self.answer(&partial, &mut out)?;
                }
                break;
            }
            let mut start = 0;
            for end in memchr::memchr_iter(b'\n', buf) {
                if partial.is_empty() {
                    self.answer(&buf[start..=end], &mut out)?;
                } else {
                    partial.extend_from_slice(&buf[start..=end]);
                    self.answer(&partial, &mut out)?;
                    partial.clear();
                }
                start = end + 1;
            }
            partial.extend_from_slice(&buf[start..]);
            let consumed = buf.len();
            input.consume(consumed);
        }
        out.flush()
    }

    /// Evaluates one line (with or without its line ending) and writes its answer.
    fn answer(&mut self, line: &[u8], out: &mut impl Write) -> io::Result<()> {
        match std::str::from_utf8(trim_line_end(line)) {
            Ok(text) => match self.line(text) {
                Ok(output) => write_output(out, &output),
                Err(message) => write_error(out, &message),
            },
            Err(_) => write_error(out, "the line is not valid UTF-8"),
        }
    }

    fn line(&mut self, text: &str) -> Result<Output, String> {
        if text.trim().is_empty() {
            return Err("empty line".into());
        }
        let mut de = serde_json::Deserializer::from_str(text);
        let line = LineSeed {
            request: &mut self.request,
        }
        .deserialize(&mut de)
        .and_then(|line| de.end().map(|()| line))
        .map_err(|e| e.to_string())?;
        match (&line.op, &line.request_type) {
            (Some(_), Some(_)) => {
                Err("a line has either \"type\" (a request) or \"op\", not both".into())
            }
            (None, None) => Err(
                "a line needs \"type\" (a request) or \"op\" (quota_clear or quota_list)".into(),
            ),
            (Some(op), None) => self.operation(op, &line),
            (None, Some(t)) => {
                let request_type: RequestType = t
                    .parse()
                    .map_err(|e: kss_policy::UnknownRequestType| e.to_string())?;
                let at = instant(line.at.as_deref())?;
                self.fill_request(request_type, &line)?;
                Ok(Output::Decision(self.policy.evaluate(
                    &self.request,
                    at,
                    self.tz,
                    self.store,
                )))
            }
        }
    }

    fn operation(&mut self, op: &str, line: &Line<'_>) -> Result<Output, String> {
        match op {
            "quota_clear" => {
                let profile = match line.profile_id.as_deref() {
                    Some(hex) => Some(decode_hex("profile_id", hex)?),
                    None => None,
                };
                self.store
                    .clear(profile.as_deref())
                    .map_err(|e| e.to_string())?;
                Ok(Output::Ok)
            }
            "quota_list" => {
                let at = instant(line.at.as_deref())?;
                let window = QuotaWindow::of(self.tz.to_datetime(at));
                let profiles = self
                    .store
                    .at_quota(self.policy.quota_limits(), window)
                    .map_err(|e| e.to_string())?;
                Ok(Output::AtQuota(profiles))
            }
            other => Err(format!(
                "unknown op '{other}' (expected quota_clear or quota_list)"
            )),
        }
    }

    fn fill_request(&mut self, request_type: RequestType, line: &Line<'_>) -> Result<(), String> {
        let r = &mut self.request;
        r.request_type = request_type;
        decode_hex_into("profile_id", line.profile_id.as_deref(), &mut r.profile_id)?;
        decode_hex_into("device_id", line.device_id.as_deref(), &mut r.device_id)?;
        decode_hex_into(
            "cryptographic_id",
            line.cryptographic_id.as_deref(),
            &mut r.cryptographic_id,
        )?;
        Ok(())
    }
}

/// Reads a JSON list (or null: empty) into `slots`, reusing their allocations across lines.
struct ListSeed<'s, T, I, F> {
    slots: &'s mut Vec<T>,
    set: F,
    item: std::marker::PhantomData<I>,
}

impl<'s, T, I, F> ListSeed<'s, T, I, F> {
    fn new(slots: &'s mut Vec<T>, set: F) -> Self {
        ListSeed {
            slots,
            set,
            item: std::marker::PhantomData,
        }
    }
}

impl<'de, T: Default, I: Deserialize<'de>, F: Fn(&mut T, I)> DeserializeSeed<'de>
    for ListSeed<'_, T, I, F>
{
    type Value = ();

    fn deserialize<D: serde::Deserializer<'de>>(self, deserializer: D) -> Result<(), D::Error> {
        deserializer.deserialize_option(self)
    }
}

impl<'de, T: Default, I: Deserialize<'de>, F: Fn(&mut T, I)> Visitor<'de>
    for ListSeed<'_, T, I, F>
{
    type Value = ();

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("a list")
    }

    fn visit_none<E: serde::de::Error>(self) -> Result<(), E> {
        self.slots.clear();
        Ok(())
    }

    fn visit_some<D: serde::Deserializer<'de>>(self, deserializer: D) -> Result<(), D::Error> {
        deserializer.deserialize_seq(self)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        let mut n = 0;
        while let Some(item) = seq.next_element::<I>()? {
            if n == self.slots.len() {
                self.slots.push(T::default());
            }
            (self.set)(&mut self.slots[n], item);
            n += 1;
        }
        self.slots.truncate(n);
        Ok(())
    }
}

fn trim_line_end(line: &[u8]) -> &[u8] {
    let line = line.strip_suffix(b"\n").unwrap_or(line);
    line.strip_suffix(b"\r").unwrap_or(line)
}

fn instant(at: Option<&str>) -> Result<Timestamp, String> {
    match at {
        None => Ok(Timestamp::now()),
        Some(text) => text.parse::<Timestamp>().map_err(|e| {
            format!("\"at\" must be an RFC 3339 instant such as 2022-03-09T17:00:00Z: {e}")
        }),
    }
}

fn decode_hex(field: &str, hex: &str) -> Result<Vec<u8>, String> {
    let mut out = Vec::new();
    decode_hex_into(field, Some(hex), &mut out)?;
    Ok(out)
}

fn decode_hex_into(field: &str, hex: Option<&str>, out: &mut Vec<u8>) -> Result<(), String> {
    out.clear();
    let Some(hex) = hex else {
        return Ok(());
    };
    if hex.len() % 2 != 0 {
        return Err(format!(
            "\"{field}\" must be hex with an even number of digits"
        ));
    }
    out.reserve(hex.len() / 2);
    let mut invalid = 0u8;
    for pair in hex.as_bytes().chunks_exact(2) {
        let (hi, lo) = (
            HEX_VALUE[usize::from(pair[0])],
            HEX_VALUE[usize::from(pair[1])],
        );
        invalid |= (hi | lo) & 0x80;
        out.push(hi << 4 | (lo & 0x0f));
    }
    if invalid != 0 {
        return Err(format!("\"{field}\" must be hex"));
    }
    Ok(())
}

/// The value of each hex digit; 0xFF for every other byte.
const HEX_VALUE: [u8; 256] = {
    let mut table = [0xFF; 256];
    let mut i = 0;
    while i < 10 {
        table[b'0' as usize + i] = i as u8;
        i += 1;
    }
    let mut i = 0;
    while i < 6 {
        table[b'a' as usize + i] = 10 + i as u8;
        table[b'A' as usize + i] = 10 + i as u8;
        i += 1;
    }
    table
};

fn write_output(out: &mut impl Write, output: &Output) -> io::Result<()> {
    match output {
        Output::Decision(d) => match d.rule_set() {
            Some(i) if d.is_approved() => writeln!(out, "{{\"approved\":true,\"rule_set\":{i}}}"),
            None if d.is_approved() => out.write_all(b"{\"approved\":true,\"rule_set\":null}\n"),
            _ => out.write_all(b"{\"approved\":false,\"rule_set\":null}\n"),
        },
        Output::Ok => out.write_all(b"{\"ok\":true}\n"),
        Output::AtQuota(profiles) => {
            out.write_all(b"{\"at_quota\":[")?;
            for (i, p) in profiles.iter().enumerate() {
                if i > 0 {
                    out.write_all(b",")?;
                }
                write!(out, "\"{}\"", hex::encode(p))?;
            }
            out.write_all(b"]}\n")
        }
    }
}

fn write_error(out: &mut impl Write, message: &str) -> io::Result<()> {
    serde_json::to_writer(&mut *out, &serde_json::json!({ "error": message }))?;
    out.write_all(b"\n")
}

#[cfg(test)]
mod tests {
    use super::*;
    use kss_policy::MemoryQuotaStore;

    fn run(policy: &str, input: &str) -> Vec<String> {
        let policy = Policy::load(policy).expect("valid policy");
        let tz = TimeZone::UTC;
        let store = MemoryQuotaStore::new();
        let mut out = Vec::new();
        Evaluator::new(&policy, &tz, &store)
            .run(input.as_bytes(), &mut out)
            .expect("runs");
        String::from_utf8(out)
            .expect("utf8")
            .lines()
            .map(str::to_string)
            .collect()
    }

    #[test]
    fn one_line_out_per_line_in_and_errors_do_not_stop() {
        let out = run(
            "decrypt:\n  - - rule: per-profile-throttle-rule\n      per_day: 1\n",
            concat!(
                r#"{"type":"decrypt","profile_id":"aa","at":"2022-03-09T17:00:00Z"}"#,
                "\n",
                "not json\n",
                "\n",
                r#"{"type":"decrypt","profile_id":"aa","at":"2022-03-09T18:00:00Z"}"#,
                "\n",
                r#"{"op":"quota_list","at":"2022-03-09T18:00:00Z"}"#,
                "\n",
                r#"{"op":"quota_clear","profile_id":"aa"}"#,
                "\n",
                r#"{"op":"quota_list","at":"2022-03-09T18:00:00Z"}"#,
                "\n",
                r#"{"type":"decrypt","profile_id":"a","at":"2022-03-09T18:00:00Z"}"#,
                "\n",
                r#"{"type":"nope"}"#,
                "\n",
                r#"{"at":"2022-03-09T18:00:00Z","type":"create_profile"}"#,
                "\r\n",
            ),
        );
        assert_eq!(out.len(), 10, "{out:?}");
        assert_eq!(out[0], r#"{"approved":true,"rule_set":0}"#);
        assert!(out[1].starts_with(r#"{"error":"#), "{}", out[1]);
        assert_eq!(out[2], r#"{"error":"empty line"}"#);
        assert_eq!(out[3], r#"{"approved":false,"rule_set":null}"#);
        assert_eq!(out[4], r#"{"at_quota":["aa"]}"#);
        assert_eq!(out[5], r#"{"ok":true}"#);
        assert_eq!(out[6], r#"{"at_quota":[]}"#);
        assert!(out[7].contains("even number"), "{}", out[7]);
        assert!(out[8].contains("unknown request type"), "{}", out[8]);
        assert_eq!(out[9], r#"{"approved":true,"rule_set":null}"#);
    }

    #[test]
    fn lines_split_across_reads_and_a_last_line_without_newline() {
        let policy =
            Policy::load("decrypt:\n  - - rule: per-profile-throttle-rule\n      per_day: 2\n")
                .expect("valid policy");
        let tz = TimeZone::UTC;
        let line = r#"{"type":"decrypt","profile_id":"aa","at":"2022-03-09T17:00:00Z"}"#;
        let input = format!("{line}\n{line}\r\n{line}");
        for capacity in [1, 7, 64, 1 << 16] {
            let store = MemoryQuotaStore::new();
            let mut out = Vec::new();
            Evaluator::new(&policy, &tz, &store)
                .run(
                    std::io::BufReader::with_capacity(capacity, input.as_bytes()),
                    &mut out,
                )
                .expect("runs");
            assert_eq!(
                String::from_utf8(out).expect("utf8"),
                "{\"approved\":true,\"rule_set\":0}\n{\"approved\":true,\"rule_set\":0}\n{\"approved\":false,\"rule_set\":null}\n",
                "buffer capacity {capacity}"
            );
        }
    }
}
