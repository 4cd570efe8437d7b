//! Database addresses: the URL form and the product's `mysql:key=value,...` form.

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
/// Errors say what is wrong, never with the password.
pub fn parse_db_uri(uri: &str) -> Result<MySqlConnectOptions, StoreError> {
    let uri = uri.trim();
    if let Some(rest) = uri.strip_prefix("mysql://") {
        let password = url_password(rest);
        return MySqlConnectOptions::from_str(uri).map_err(|e| {
            let mut msg = e.to_string();
            if let Some(p) = password.filter(|p| !p.is_empty()) {
                msg = msg.replace(p, "<password>");
            }
            StoreError::Unavailable(format!("invalid database URL: {msg}"))
        });
    }
    if let Some(rest) = uri.strip_prefix("mysql:") {
        return parse_key_values(rest);
    }
    Err(config_error(
        "database address must start with mysql:// or mysql: (e.g. mysql:host=H,port=P,user=U,\
         password=W,database=D)",
    ))
}

fn config_error(msg: impl Into<String>) -> StoreError {
    StoreError::Unavailable(msg.into())
}

/// The raw password of `user:password@host...` (to keep it out of error messages).
fn url_password(after_scheme: &str) -> Option<&str> {
    let at = after_scheme.rfind('@')?;
    let userinfo = &after_scheme[..at];
    userinfo.split_once(':').map(|(_, p)| p)
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

fn parse_key_values(s: &str) -> Result<MySqlConnectOptions> {
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
            other => {
                return Err(config_error(format!(
                    "database address: unknown key '{other}' (expected host, port, user, \
                     password, database, ssl-mode, ssl-ca)"
                )));
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
                "database address: port '{p}' is not a number from 1 to 65535"
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
    Ok(options)
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
                "port 'x'",
            ),
            (
                format!("mysql:host=h,user=u,password={secret},database=d,colour=1"),
                "'colour'",
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
        ] {
            let e = parse_db_uri(&uri).unwrap_err().to_string();
            assert!(e.contains(expect), "{e:?} should contain {expect:?}");
            assert!(!e.contains(secret), "{e:?} leaks the password");
        }
    }
}
