//! Database addresses: the URL form and the product's `mysql:key=value,...` form.
//!
//! TLS is verified by default: an address that names no `ssl-mode` connects with
//! `VERIFY_IDENTITY` (TLS required, the server's certificate checked against the CA and
//! its name against the host). Other modes are used only when the address asks for them:
//! `ssl-mode=DISABLED` for plaintext, `PREFERRED` / `REQUIRED` (TLS without verification)
//! or `VERIFY_CA` (no name check).

use std::path::Path;
use std::str::FromStr;

use sqlx::mysql::{MySqlConnectOptions, MySqlSslMode};

use crate::{Result, StoreError};

/// Parses a database address, in either form:
///
/// * `mysql://user:password@host:port/database?ssl-mode=VERIFY_CA&ssl-ca=/path/ca.pem`
///   (user and password percent-encoded, as sqlx reads them);
/// * `mysql:host=H,port=P,user=U,password=W,database=D[,ssl-mode=M][,ssl-ca=PATH]`.
///   Values are literal; a `,` or `\` inside a value is written `\,` or `\\`. `host`,
///   `user` and `database` are required, `port` defaults to 3306.
///
/// Without an `ssl-mode`, the connection is `VERIFY_IDENTITY` (see the module
/// documentation); without an `ssl-ca`, the server's certificate must chain to one of the
/// built-in public roots (Mozilla's). Errors say what is wrong, never with the password.
pub fn parse_db_uri(uri: &str) -> Result<MySqlConnectOptions, StoreError> {
    parse_db_uri_with_ca(uri, None)
}

/// [`parse_db_uri`], with `ca_file` (PEM) as the CA that the database server's
/// certificate is checked against when the address names no `ssl-ca` of its own (the
/// address's wins). `kss serve --db-ca-file` passes it.
pub fn parse_db_uri_with_ca(
    uri: &str,
    ca_file: Option<&Path>,
) -> Result<MySqlConnectOptions, StoreError> {
    let uri = uri.trim();
    // URL parsers drop tabs and line breaks silently: `?ssl\rmode=DISABLED` would be read
    // as `sslmode=DISABLED` by both sqlx and the check below, from an address that does
    // not say so to a reader (found by fuzzing). No control character is meant here.
    if let Some(at) = uri.chars().position(char::is_control) {
        return Err(config_error(format!(
            "database address: a control character at position {at} (tabs and line breaks \
             included)"
        )));
    }
    let parsed = if let Some(rest) = uri.strip_prefix("mysql://") {
        let options = MySqlConnectOptions::from_str(uri).map_err(|e| {
            let mut msg = e.to_string();
            for p in url_passwords(uri, rest) {
                msg = msg.replace(&p, "<password>");
            }
            // sqlx quotes values of the address: bounded (found by fuzzing).
            if msg.chars().count() > MAX_QUOTED_ERROR_CHARS {
                msg = msg.chars().take(MAX_QUOTED_ERROR_CHARS).collect::<String>() + "...";
            }
            StoreError::Unavailable(format!("invalid database URL: {msg}"))
        })?;
        let keys = url_query_keys(uri)?;
        let named = |names: [&str; 2]| keys.iter().any(|k| names.contains(&k.as_str()));
        Parsed {
            options,
            // The names sqlx reads (sqlx-mysql src/options/parse.rs).
            has_ssl_mode: named(["ssl-mode", "sslmode"]),
            has_ssl_ca: named(["ssl-ca", "sslca"]),
        }
    } else if let Some(rest) = uri.strip_prefix("mysql:") {
        parse_key_values(rest)?
    } else {
        return Err(config_error(
            "database address must start with mysql:// or mysql: (e.g. mysql:host=H,port=P,\
             user=U,password=W,database=D)",
        ));
    };
    let mut options = parsed.options;
    if !parsed.has_ssl_mode {
        options = options.ssl_mode(MySqlSslMode::VerifyIdentity);
    }
    if let Some(ca) = ca_file.filter(|_| !parsed.has_ssl_ca) {
        options = options.ssl_ca(ca);
    }
    Ok(options)
}

/// Options, and whether the address named the TLS settings that have defaults here.
struct Parsed {
    options: MySqlConnectOptions,
    has_ssl_mode: bool,
    has_ssl_ca: bool,
}

/// The (percent-decoded) keys of a URL's query, read with the `url` crate as sqlx reads
/// them, so that what is checked here is what sqlx applies. A fragment (`#...`) is
/// refused: it has no meaning in a database address, and text after a `#` that looks
/// like a query (`/db#x?ssl-mode=DISABLED`) would otherwise be taken for one here while
/// sqlx ignores it.
fn url_query_keys(uri: &str) -> Result<Vec<String>> {
    let url = url::Url::parse(uri).map_err(|e| {
        // The `url` crate's messages name the problem, never the input.
        config_error(format!("invalid database URL: {e}"))
    })?;
    if url.fragment().is_some() {
        return Err(config_error(
            "invalid database URL: it has a '#' fragment (a '#' in the password is written \
             %23)",
        ));
    }
    Ok(url.query_pairs().map(|(k, _)| k.into_owned()).collect())
}

/// A bounded, quoted excerpt of a value that is not secret (a port), for an error.
fn excerpt(value: &str) -> String {
    let head: String = value.chars().take(16).collect();
    if head.len() < value.len() {
        format!("{head:?}...")
    } else {
        format!("{head:?}")
    }
}

/// The most of sqlx's own message an error repeats.
const MAX_QUOTED_ERROR_CHARS: usize = 160;

fn config_error(msg: impl Into<String>) -> StoreError {
    StoreError::Unavailable(msg.into())
}

/// Every text that may be the password of a URL, to keep out of error messages (sqlx's
/// quote values of the query): the password as the URL parser reads it, and the text
/// between the first ':' and the last '@' after the scheme (what a user who did not
/// percent-encode a '/', '?' or '@' meant), each as written and percent-decoded; the
/// longest first, so that a shorter one inside a longer one does not leave a part of it.
/// Found by fuzzing: `mysql://h/d?ssl-mode=x:pass%30word@h/d` had sqlx echo the decoded
/// text after the ':'.
fn url_passwords(uri: &str, after_scheme: &str) -> Vec<String> {
    let mut raw = Vec::new();
    if let Some(p) = url::Url::parse(uri)
        .ok()
        .and_then(|u| u.password().map(String::from))
    {
        raw.push(p);
    }
    if let Some(at) = after_scheme.rfind('@')
        && let Some((_, p)) = after_scheme[..at].split_once(':')
    {
        raw.push(p.to_string());
    }
    let mut all: Vec<String> = raw
        .iter()
        .flat_map(|p| {
            let decoded = percent_encoding::percent_decode_str(p)
                .decode_utf8_lossy()
                .into_owned();
            [p.clone(), decoded]
        })
        .filter(|p| !p.is_empty())
        .collect();
    all.sort_by_key(|p| std::cmp::Reverse(p.len()));
    all.dedup();
    all
}

/// Splits `k=v,k=v` with `\,` and `\\` escapes.
fn split_pairs(s: &str) -> Result<Vec<(String, String)>> {
    let mut items = Vec::new();
    let mut current = String::new();
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        match c {
            '\\' => match chars.next() {
                Some(n @ (',' | '\\')) => current.push(n),
                _ => {
                    return Err(config_error(
                        "database address: '\\' must be followed by ',' or '\\'",
                    ));
                }
            },
            ',' => items.push(std::mem::take(&mut current)),
            c => current.push(c),
        }
    }
    items.push(current);
    let mut pairs = Vec::new();
    for item in items {
        if item.trim().is_empty() {
            continue;
        }
        let Some((k, v)) = item.split_once('=') else {
            // The item may be (part of) a password: name nothing of it.
            return Err(config_error(
                "database address: every item must be key=value (a ',' inside a value is \
                 written '\\,')",
            ));
        };
        pairs.push((k.trim().to_ascii_lowercase(), v.to_string()));
    }
    Ok(pairs)
}

fn parse_key_values(s: &str) -> Result<Parsed> {
    let mut host = None;
    let mut port = None;
    let mut user = None;
    let mut password = None;
    let mut database = None;
    let mut ssl_mode = None;
    let mut ssl_ca = None;
    for (key, value) in split_pairs(s)? {
        let slot = match key.as_str() {
            "host" => &mut host,
            "port" => &mut port,
            "user" => &mut user,
            "password" => &mut password,
            "database" => &mut database,
            "ssl-mode" => &mut ssl_mode,
            "ssl-ca" => &mut ssl_ca,
            // Not named: with an unescaped ',' in a password, the "key" is part of it.
            _ => {
                return Err(config_error(
                    "database address: an unknown key (expected host, port, user, password, \
                     database, ssl-mode, ssl-ca; a ',' inside a value is written '\\,')",
                ));
            }
        };
        if slot.replace(value).is_some() {
            return Err(config_error(format!(
                "database address: key '{key}' given twice"
            )));
        }
    }
    let required = |v: Option<String>, name: &str| {
        v.filter(|v| !v.is_empty())
            .ok_or_else(|| config_error(format!("database address: '{name}' is missing")))
    };
    let mut options = MySqlConnectOptions::new()
        .host(&required(host, "host")?)
        .username(&required(user, "user")?)
        .database(&required(database, "database")?);
    if let Some(p) = port {
        let p: u16 = p.trim().parse().map_err(|_| {
            config_error(format!(
                "database address: port {} is not a number from 1 to 65535",
                excerpt(&p)
            ))
        })?;
        if p == 0 {
            return Err(config_error("database address: port 0"));
        }
        options = options.port(p);
    }
    if let Some(p) = password {
        options = options.password(&p);
    }
    let has_ssl_mode = ssl_mode.is_some();
    let has_ssl_ca = ssl_ca.is_some();
    if let Some(m) = ssl_mode {
        let mode = MySqlSslMode::from_str(m.trim()).map_err(|_| {
            config_error(format!(
                "database address: ssl-mode '{m}' (expected DISABLED, PREFERRED, REQUIRED, \
                 VERIFY_CA or VERIFY_IDENTITY)"
            ))
        })?;
        options = options.ssl_mode(mode);
    }
    if let Some(ca) = ssl_ca {
        options = options.ssl_ca(ca);
    }
    Ok(Parsed {
        options,
        has_ssl_mode,
        has_ssl_ca,
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn parses_url_form() {
        let o =
            parse_db_uri("mysql://kss:s3cr%40t@127.0.0.1:33306/kss?ssl-mode=VERIFY_CA").unwrap();
        assert_eq!(o.get_host(), "127.0.0.1");
        assert_eq!(o.get_port(), 33306);
        assert_eq!(o.get_username(), "kss");
        assert_eq!(o.get_database(), Some("kss"));
        assert!(matches!(o.get_ssl_mode(), MySqlSslMode::VerifyCa));
    }

    #[test]
    fn parses_key_value_form() {
        let o = parse_db_uri(
            "mysql:host=db.example,port=3307,user=kss,password=a\\,b\\\\c=d,database=keys,\
             ssl-mode=verify_identity,ssl-ca=/etc/ca.pem",
        )
        .unwrap();
        assert_eq!(o.get_host(), "db.example");
        assert_eq!(o.get_port(), 3307);
        assert_eq!(o.get_username(), "kss");
        assert_eq!(o.get_database(), Some("keys"));
        assert!(matches!(o.get_ssl_mode(), MySqlSslMode::VerifyIdentity));
        let o = parse_db_uri("mysql:host=h,user=u,database=d").unwrap();
        assert_eq!(o.get_port(), 3306);
    }

    fn ssl_ca_of(o: &MySqlConnectOptions) -> String {
        // No getter: the options' Debug names it (tests only: Debug shows the password).
        let debug = format!("{o:?}");
        let at = debug.find("ssl_ca: ").unwrap();
        debug[at..]
            .split(", ssl_client")
            .next()
            .unwrap()
            .to_string()
    }

    #[test]
    fn tls_is_verified_unless_the_address_asks_otherwise() {
        for uri in [
            "mysql://u:p@h/d",
            "mysql://u:p@h/d?charset=utf8mb4",
            "mysql://u:p@h/d?ssl-ca=/ca.pem",
            "mysql:host=h,user=u,database=d",
            "mysql:host=h,user=u,database=d,ssl-ca=/ca.pem",
        ] {
            let o = parse_db_uri(uri).unwrap();
            assert!(
                matches!(o.get_ssl_mode(), MySqlSslMode::VerifyIdentity),
                "{uri}: {:?}",
                o.get_ssl_mode()
            );
        }
        for (uri, mode) in [
            ("mysql://u:p@h/d?ssl-mode=DISABLED", MySqlSslMode::Disabled),
            ("mysql://u:p@h/d?sslmode=disabled", MySqlSslMode::Disabled),
            (
                "mysql://u:p@h/d?a=b&ssl%2Dmode=DISABLED",
                MySqlSslMode::Disabled,
            ),
            (
                "mysql://u:p@h/d?ssl-mode=PREFERRED",
                MySqlSslMode::Preferred,
            ),
            ("mysql://u:p@h/d?ssl-mode=REQUIRED", MySqlSslMode::Required),
            ("mysql://u:p@h/d?ssl-mode=VERIFY_CA", MySqlSslMode::VerifyCa),
            (
                "mysql:host=h,user=u,database=d,ssl-mode=DISABLED",
                MySqlSslMode::Disabled,
            ),
            (
                "mysql:host=h,user=u,database=d,ssl-mode=preferred",
                MySqlSslMode::Preferred,
            ),
            (
                "mysql:host=h,user=u,database=d,ssl-mode=REQUIRED",
                MySqlSslMode::Required,
            ),
        ] {
            let o = parse_db_uri(uri).unwrap();
            assert_eq!(
                format!("{:?}", o.get_ssl_mode()),
                format!("{mode:?}"),
                "{uri}"
            );
        }
        // A query-looking fragment never turns verification off (sqlx would ignore it):
        // such an address is refused.
        for uri in [
            "mysql://u:p@h/d#x?ssl-mode=DISABLED",
            "mysql://u:p@h/d#?ssl-mode=DISABLED",
            "mysql://u:p@h/d?charset=utf8mb4#&ssl-mode=DISABLED",
        ] {
            let e = parse_db_uri(uri).unwrap_err().to_string();
            assert!(e.contains("fragment"), "{uri}: {e}");
        }
        // A '?' or "ssl-mode" inside the (encoded) password is not a query.
        let o = parse_db_uri("mysql://u:ssl-mode%3DDISABLED%3F@h/d").unwrap();
        assert!(matches!(o.get_ssl_mode(), MySqlSslMode::VerifyIdentity));
    }

    #[test]
    fn a_ca_file_applies_when_the_address_names_none() {
        let ca = Path::new("/etc/kss/db-ca.pem");
        for uri in ["mysql://u:p@h/d", "mysql:host=h,user=u,database=d"] {
            let o = parse_db_uri_with_ca(uri, Some(ca)).unwrap();
            assert!(ssl_ca_of(&o).contains("/etc/kss/db-ca.pem"), "{uri}");
            assert!(matches!(o.get_ssl_mode(), MySqlSslMode::VerifyIdentity));
            assert!(ssl_ca_of(&parse_db_uri(uri).unwrap()).contains("None"));
        }
        for uri in [
            "mysql://u:p@h/d?ssl-ca=/own/ca.pem",
            "mysql://u:p@h/d?sslca=%2Fown%2Fca.pem",
            "mysql:host=h,user=u,database=d,ssl-ca=/own/ca.pem",
        ] {
            let o = parse_db_uri_with_ca(uri, Some(ca)).unwrap();
            let got = ssl_ca_of(&o);
            assert!(
                got.contains("/own/ca.pem") && !got.contains("db-ca"),
                "{uri}: {got}"
            );
        }
        // An explicit mode is kept with a CA file too.
        let o = parse_db_uri_with_ca("mysql://u:p@h/d?ssl-mode=VERIFY_CA", Some(ca)).unwrap();
        assert!(matches!(o.get_ssl_mode(), MySqlSslMode::VerifyCa));
    }

    #[test]
    fn errors_name_the_problem_not_the_password() {
        let secret = "Hunter2Secret";
        for (uri, expect) in [
            (
                format!("mysql:host=h,user=u,password={secret}"),
                "'database' is missing",
            ),
            (
                format!("mysql:host=h,user=u,password={secret},database=d,port=x"),
                "port \"x\"",
            ),
            (
                format!("mysql:host=h,user=u,password={secret},database=d,colour=1"),
                "an unknown key",
            ),
            // An unescaped ',' in the password: what follows it is not named as a key.
            (
                format!("mysql:host=h,user=u,password=x,{secret}=1,database=d"),
                "an unknown key",
            ),
            (
                format!("mysql:host=h,user=u,password={secret},password=x,database=d"),
                "twice",
            ),
            (
                format!("mysql:host=h,user=u,{secret},database=d"),
                "key=value",
            ),
            (
                format!("mysql:host=h,user=u,password={secret},database=d,ssl-mode=x"),
                "ssl-mode",
            ),
            (
                format!("mysql://u:{secret}@h:99999/d"),
                "invalid database URL",
            ),
            (
                format!("mysql://u:{secret}@h/d?ssl-mode=bogus"),
                "invalid database URL",
            ),
            (format!("postgres://u:{secret}@h/d"), "mysql://"),
            (
                format!("mysql://u:{secret}@h/d?ssl\rmode=DISABLED"),
                "control character",
            ),
            (
                format!("mysql:host=h,user=u,password={secret},database=d,ssl-mode=\tDISABLED"),
                "control character",
            ),
            // Text after a '#' is a fragment to sqlx: refused rather than half-read.
            (
                format!("mysql://u:{secret}@h/d#x?ssl-mode=DISABLED"),
                "'#' fragment",
            ),
            (format!("mysql://u:{secret}@h/d?a=b#c"), "'#' fragment"),
            // sqlx quotes an unknown ssl-mode value: text there that may be a password
            // (as written or decoded) is not repeated.
            (
                "mysql://h/d?ssl-mode=x:Hunter2Se%63ret@h/d".to_string(),
                "ssl_mode",
            ),
        ] {
            let e = parse_db_uri(&uri).unwrap_err().to_string();
            assert!(e.contains(expect), "{e:?} should contain {expect:?}");
            assert!(!e.contains(secret), "{e:?} leaks the password");
            let e = parse_db_uri_with_ca(&uri, Some(Path::new("/ca.pem")))
                .unwrap_err()
                .to_string();
            assert!(e.contains(expect), "{e:?} should contain {expect:?}");
            assert!(!e.contains(secret), "{e:?} leaks the password");
        }
    }
}
