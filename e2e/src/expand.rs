//! The kubelet's `$(VAR)` expansion of container `env` values, `command` and `args`
//! (Kubernetes `third_party/forked/golang/expansion`), the rewriting of in-pod mount
//! paths to host directories, and of wildcard listen addresses to the pod IP.

use std::path::{Path, PathBuf};

/// Expands `$(NAME)` references in `input` as the kubelet does:
///
/// - `$(NAME)` is replaced by `lookup(NAME)`; an unknown name is left as written, `$(NAME)`;
/// - `$$` is an escaped `$` (so `$$(NAME)` gives the literal `$(NAME)`);
/// - a `$` followed by anything else, an unclosed `$(`, or a trailing `$` are kept as is.
pub fn expand(input: &str, lookup: impl Fn(&str) -> Option<String>) -> String {
    let bytes = input.as_bytes();
    let mut out = String::with_capacity(input.len());
    let mut checkpoint = 0;
    let mut cursor = 0;
    while cursor < bytes.len() {
        if bytes[cursor] == b'$' && cursor + 1 < bytes.len() {
            out.push_str(&input[checkpoint..cursor]);
            let rest = &input[cursor + 1..];
            // `advance`: bytes consumed after the `$`.
            let advance = match rest.as_bytes()[0] {
                b'$' => {
                    out.push('$');
                    1
                }
                b'(' => match rest.find(')') {
                    Some(close) => {
                        let name = &rest[1..close];
                        match lookup(name) {
                            Some(value) => out.push_str(&value),
                            None => {
                                out.push_str("$(");
                                out.push_str(name);
                                out.push(')');
                            }
                        }
                        close + 1
                    }
                    None => {
                        // An incomplete reference is kept literally.
                        out.push_str("$(");
                        1
                    }
                },
                _ => {
                    // Not an expression: the `$` and the character after it.
                    let ch_len = rest.chars().next().map_or(1, char::len_utf8);
                    out.push('$');
                    out.push_str(&rest[..ch_len]);
                    ch_len
                }
            };
            cursor += advance;
            checkpoint = cursor + 1;
        }
        cursor += 1;
    }
    if checkpoint < input.len() {
        out.push_str(&input[checkpoint..]);
    }
    out
}

/// In-pod mount paths and the host paths they stand for.
#[derive(Debug, Clone, Default)]
pub struct MountMap {
    /// (mount path without trailing `/`, host path), longest mount path first.
    entries: Vec<(String, PathBuf)>,
}

impl MountMap {
    pub fn new(mounts: impl IntoIterator<Item = (String, PathBuf)>) -> MountMap {
        let mut entries: Vec<(String, PathBuf)> = mounts
            .into_iter()
            .map(|(mount, host)| {
                let trimmed = mount.trim_end_matches('/');
                let mount = if trimmed.is_empty() { "/" } else { trimmed };
                (mount.to_string(), host)
            })
            .collect();
        entries.sort_by(|a, b| b.0.len().cmp(&a.0.len()).then_with(|| a.0.cmp(&b.0)));
        MountMap { entries }
    }

    /// The host path for an absolute in-pod path, if it lies under a mount.
    pub fn host_path(&self, pod_path: &str) -> Option<PathBuf> {
        self.entries.iter().find_map(|(mount, host)| {
            let rest = pod_path.strip_prefix(mount.as_str())?;
            if rest.is_empty() {
                Some(host.clone())
            } else {
                let rest = rest.strip_prefix('/')?;
                Some(host.join(rest))
            }
        })
    }

    /// Rewrites every occurrence of a mount path inside `value` to its host path. An
    /// occurrence counts when it is not preceded by a path-name character (letters,
    /// digits, `_`, `-`, `.`, `/`) and is followed by `/`, the end of the value, or a
    /// character that cannot continue a path name (`=`, `,`, `:`, space, ...). So
    /// `--data-dir=/var/lib/kss`, `/var/lib/kss/kss.db` and `a:/var/lib/kss` are
    /// rewritten, `/var/lib/kss2` and `/x/var/lib/kss` are not. Each part of the value
    /// is rewritten at most once (the longest matching mount wins).
    pub fn rewrite(&self, value: &str) -> String {
        if self.entries.is_empty() {
            return value.to_string();
        }
        let mut out = String::with_capacity(value.len());
        let mut i = 0;
        let bytes = value.as_bytes();
        'scan: while i < bytes.len() {
            let at_boundary = i == 0 || !is_path_char(bytes[i - 1]);
            if at_boundary && bytes[i] == b'/' {
                for (mount, host) in &self.entries {
                    let rest = &value[i..];
                    if !rest.starts_with(mount.as_str()) {
                        continue;
                    }
                    let end = i + mount.len();
                    let ends_ok = mount == "/"
                        || end == bytes.len()
                        || bytes[end] == b'/'
                        || !is_name_char(bytes[end]);
                    if ends_ok {
                        out.push_str(&host.to_string_lossy());
                        if mount == "/" {
                            out.push('/');
                        }
                        i = end;
                        continue 'scan;
                    }
                }
            }
            let ch_len = value[i..].chars().next().map_or(1, char::len_utf8);
            out.push_str(&value[i..i + ch_len]);
            i += ch_len;
        }
        out
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The (mount path, host path) pairs, longest mount path first.
    pub fn entries(&self) -> impl Iterator<Item = (&str, &Path)> {
        self.entries.iter().map(|(m, h)| (m.as_str(), h.as_path()))
    }
}

/// Replaces the wildcard addresses `0.0.0.0` and `[::]` followed by `:<port>` with
/// `pod_ip`: inside a pod they mean "every address of this pod", and the pod's processes
/// share the host's network here, so two pods' `0.0.0.0:8443` listeners would collide.
/// An occurrence preceded by a digit, letter or `.` is left alone.
pub fn bind_to_pod_ip(value: &str, pod_ip: &str) -> String {
    if pod_ip.is_empty() {
        return value.to_string();
    }
    let mut out = String::with_capacity(value.len());
    let bytes = value.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        let boundary = i == 0 || !(bytes[i - 1].is_ascii_alphanumeric() || bytes[i - 1] == b'.');
        if boundary {
            let rest = &value[i..];
            let matched = ["0.0.0.0:", "[::]:"]
                .into_iter()
                .find(|any| rest.starts_with(any));
            if let Some(any) = matched {
                out.push_str(pod_ip);
                out.push(':');
                i += any.len();
                continue;
            }
        }
        let ch_len = value[i..].chars().next().map_or(1, char::len_utf8);
        out.push_str(&value[i..i + ch_len]);
        i += ch_len;
    }
    out
}

fn is_name_char(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.')
}

fn is_path_char(b: u8) -> bool {
    is_name_char(b) || b == b'/'
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn ex(input: &str) -> String {
        let vars: HashMap<&str, &str> = [("POD_IP", "127.1.0.2"), ("EMPTY", ""), ("A", "$(B)")]
            .into_iter()
            .collect();
        expand(input, |name| vars.get(name).map(|v| v.to_string()))
    }

    #[test]
    fn expansion_matches_the_kubelet() {
        // Cases from Kubernetes' expansion_test.go.
        assert_eq!(ex("$(POD_IP):8443"), "127.1.0.2:8443");
        assert_eq!(ex("--listen=$(POD_IP):8443"), "--listen=127.1.0.2:8443");
        assert_eq!(ex("$(EMPTY)x"), "x");
        assert_eq!(ex("$(UNKNOWN)"), "$(UNKNOWN)");
        assert_eq!(ex("$$(POD_IP)"), "$(POD_IP)");
        assert_eq!(ex("$$$(POD_IP)"), "$127.1.0.2");
        assert_eq!(ex("$$$$(POD_IP)"), "$$(POD_IP)");
        assert_eq!(ex("$$"), "$");
        assert_eq!(ex("$"), "$");
        assert_eq!(ex("x$"), "x$");
        assert_eq!(ex("$x"), "$x");
        assert_eq!(ex("$(POD_IP"), "$(POD_IP");
        assert_eq!(ex("$("), "$(");
        assert_eq!(ex("$()"), "$()");
        assert_eq!(ex("$(A)"), "$(B)", "no recursive expansion");
        assert_eq!(ex("é$(POD_IP)é"), "é127.1.0.2é");
        assert_eq!(ex("$é"), "$é");
        assert_eq!(ex("no refs"), "no refs");
        assert_eq!(ex("$(POD_IP)$(POD_IP)"), "127.1.0.2127.1.0.2");
        assert_eq!(ex("?_+$(POD_IP)"), "?_+127.1.0.2");
    }

    #[test]
    fn wildcard_listen_addresses_become_the_pod_ip() {
        let ip = "127.9.0.2";
        assert_eq!(bind_to_pod_ip("0.0.0.0:8443", ip), "127.9.0.2:8443");
        assert_eq!(
            bind_to_pod_ip("--listen=0.0.0.0:8443", ip),
            "--listen=127.9.0.2:8443"
        );
        assert_eq!(bind_to_pod_ip("[::]:9464", ip), "127.9.0.2:9464");
        assert_eq!(bind_to_pod_ip("10.0.0.0:1", ip), "10.0.0.0:1");
        assert_eq!(bind_to_pod_ip("x0.0.0.0:1", ip), "x0.0.0.0:1");
        assert_eq!(
            bind_to_pod_ip("0.0.0.0", ip),
            "0.0.0.0",
            "no port: not a listener"
        );
        assert_eq!(bind_to_pod_ip("127.0.0.1:9464", ip), "127.0.0.1:9464");
        assert_eq!(bind_to_pod_ip("0.0.0.0:1", ""), "0.0.0.0:1");
    }

    #[test]
    fn mount_paths_are_rewritten_at_path_boundaries() {
        let map = MountMap::new([
            ("/var/lib/kss".to_string(), PathBuf::from("/h/pvc")),
            ("/etc/kss/".to_string(), PathBuf::from("/h/etc")),
            ("/etc/kss/tls".to_string(), PathBuf::from("/h/tls")),
        ]);
        assert_eq!(map.rewrite("/var/lib/kss"), "/h/pvc");
        assert_eq!(map.rewrite("--data-dir=/var/lib/kss"), "--data-dir=/h/pvc");
        assert_eq!(map.rewrite("/var/lib/kss/kss.db"), "/h/pvc/kss.db");
        assert_eq!(map.rewrite("/var/lib/kss2"), "/var/lib/kss2");
        assert_eq!(map.rewrite("/x/var/lib/kss"), "/x/var/lib/kss");
        assert_eq!(map.rewrite("a,/etc/kss,b"), "a,/h/etc,b");
        assert_eq!(map.rewrite("/etc/kss/tls/tls.crt"), "/h/tls/tls.crt");
        assert_eq!(map.rewrite("/etc/kss/master.key"), "/h/etc/master.key");
        assert_eq!(
            map.rewrite("/etc/kss/tls.crt:/var/lib/kss"),
            "/h/etc/tls.crt:/h/pvc"
        );
        assert_eq!(map.rewrite("relative/etc/kss"), "relative/etc/kss");
        assert_eq!(
            map.host_path("/etc/kss/tls/ca.pem"),
            Some(PathBuf::from("/h/tls/ca.pem"))
        );
        assert_eq!(map.host_path("/etc/kssx"), None);
    }
}
