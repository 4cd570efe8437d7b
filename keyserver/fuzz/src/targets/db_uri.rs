//! Database addresses (`--db`, `KSS_DB`, the operator's Secret), in both forms. An error
//! never contains the password; TLS is weakened only when the address asks for it by name.

use std::ops::Range;
use std::path::Path;

use kss_store::{parse_db_uri, parse_db_uri_with_ca};
use percent_encoding::percent_decode_str;

use super::assert_bounded;

pub fn db_uri(data: &[u8]) {
    let Ok(uri) = std::str::from_utf8(data) else {
        return;
    };
    let ca = Path::new("/etc/kss/db-ca.pem");
    for parsed in [parse_db_uri(uri), parse_db_uri_with_ca(uri, Some(ca))] {
        match parsed {
            Ok(options) => {
                use sqlx::mysql::MySqlSslMode;
                let weakened = !matches!(options.get_ssl_mode(), MySqlSslMode::VerifyIdentity);
                if weakened {
                    let asked = decoded(uri).to_ascii_lowercase();
                    assert!(
                        asked.contains("ssl-mode") || asked.contains("sslmode"),
                        "TLS weakened without an ssl-mode: {uri:?}"
                    );
                }
            }
            Err(e) => {
                let message = e.to_string();
                assert_no_password(uri, &message);
                assert_bounded("a refused database address", &message);
            }
        }
    }
}

fn decoded(text: &str) -> String {
    percent_decode_str(text).decode_utf8_lossy().into_owned()
}

/// Where the password is in `uri`, as the parser reads the address.
fn password_span(uri: &str) -> Option<Range<usize>> {
    let trimmed = uri.trim_start();
    let offset = uri.len() - trimmed.len();
    if let Some(rest) = trimmed.strip_prefix("mysql://") {
        let start = offset + "mysql://".len();
        let at = rest.rfind('@')?;
        let colon = rest[..at].find(':')?;
        return Some(start + colon + 1..start + at);
    }
    let rest = trimmed.strip_prefix("mysql:")?;
    let mut start = offset + "mysql:".len();
    let mut escaped = false;
    let mut item_start = start;
    for (i, c) in rest.char_indices() {
        let at = start + i;
        if escaped {
            escaped = false;
            continue;
        }
        match c {
            '\\' => escaped = true,
            ',' => {
                if let Some(span) = password_value(uri, item_start..at) {
                    return Some(span);
                }
                item_start = at + 1;
            }
            _ => {}
        }
    }
    start = uri.len();
    password_value(uri, item_start..start)
}

fn password_value(uri: &str, item: Range<usize>) -> Option<Range<usize>> {
    let text = &uri[item.clone()];
    let eq = text.find('=')?;
    text[..eq]
        .trim()
        .eq_ignore_ascii_case("password")
        .then(|| item.start + eq + 1..item.end)
}

fn url_password(uri: &str) -> Option<String> {
    url::Url::parse(uri.trim())
        .ok()?
        .password()
        .map(String::from)
}

/// A password of 4 or more characters (as written, and decoded) is not in the error,
/// unless the error for the same address with that password written otherwise has it too
/// (the text is then the message's own words or another field's).
fn assert_no_password(uri: &str, message: &str) {
    // (the password as an error could show it, the text of the address it comes from)
    let mut candidates = Vec::new();
    if let Some(span) = password_span(uri) {
        let written = uri[span].to_string();
        candidates.push((written.clone(), written.clone()));
        candidates.push((decoded(&written), written.clone()));
        candidates.push((written.replace("\\,", ","), written));
    }
    // The password as the URL parser reads it, too.
    if let Some(p) = url_password(uri) {
        candidates.push((decoded(&p), p.clone()));
        candidates.push((p.clone(), p));
    }
    for (password, written) in candidates {
        if password.chars().count() < 4 || !message.contains(&password) || written.is_empty() {
            continue;
        }
        let other = uri.replace(&written, "Qz");
        let other_message = parse_db_uri(&other)
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(
            other_message.contains(&password),
            "the error names the password {password:?}: {message}"
        );
    }
}
