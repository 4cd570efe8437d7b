//! Keeps the root `Dockerfile` (and `.dockerignore`) honest without a Docker engine: the
//! files it copies exist and pass the `.dockerignore`, its dependency stage knows every
//! workspace member, the packages and binaries it builds exist, its images run as the
//! nonroot user from pinned bases, its entrypoints are the binaries it copies, its
//! default commands are real subcommands, and the image tags it documents are the ones
//! the operator and the install bundle deploy.
//!
//! Not gated on `KSS_E2E`: it needs no cluster, only the debug binaries
//! (`cargo build -p kss-server --bin kss -p kss-operator --bin kss-operator`).

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Command;

use kss_e2e::harness;

/// The builder stage, and the image stages with their binaries.
const BUILDER: &str = "builder";
const IMAGES: [(&str, &str); 2] = [("kss", "kss"), ("kss-operator", "kss-operator")];
/// The nonroot user of the distroless images.
const NONROOT: &str = "65532";

fn root() -> PathBuf {
    harness::workspace_root()
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()))
}

// ------------------------------------------------------------------ the Dockerfile

#[derive(Debug, Clone)]
struct Instruction {
    line: usize,
    keyword: String,
    args: String,
}

#[derive(Debug)]
struct Stage {
    name: Option<String>,
    base: String,
    line: usize,
    instructions: Vec<Instruction>,
}

#[derive(Debug)]
struct Dockerfile {
    /// Instructions before the first FROM (global ARGs).
    global: Vec<Instruction>,
    stages: Vec<Stage>,
    /// Comment lines, without the `#`.
    comments: Vec<String>,
}

impl Dockerfile {
    fn load() -> Dockerfile {
        parse(&read(&root().join("Dockerfile")))
    }

    fn stage(&self, name: &str) -> &Stage {
        self.stages
            .iter()
            .find(|s| s.name.as_deref() == Some(name))
            .unwrap_or_else(|| panic!("Dockerfile: no stage `AS {name}`"))
    }

    fn has_stage(&self, name: &str) -> bool {
        self.stages.iter().any(|s| s.name.as_deref() == Some(name))
    }

    /// The stage and the local stages it is built FROM, nearest first.
    fn chain<'a>(&'a self, name: &str) -> Vec<&'a Stage> {
        let mut chain = vec![self.stage(name)];
        while let Some(base) = chain.last().map(|s| s.base.clone()) {
            if !self.has_stage(&base) || chain.len() > self.stages.len() {
                break;
            }
            chain.push(self.stage(&base));
        }
        chain
    }

    /// The last instruction `keyword` in effect for a stage (its own, else its bases').
    fn effective(&self, stage: &str, keyword: &str) -> Option<Instruction> {
        self.chain(stage).into_iter().find_map(|s| {
            s.instructions
                .iter()
                .rev()
                .find(|i| i.keyword == keyword)
                .cloned()
        })
    }
}

/// Line parsing: comments, `\` continuations, `KEYWORD args`, stages by FROM.
fn parse(text: &str) -> Dockerfile {
    let mut file = Dockerfile {
        global: Vec::new(),
        stages: Vec::new(),
        comments: Vec::new(),
    };
    let mut pending: Option<(usize, String)> = None;
    for (index, raw) in text.lines().enumerate() {
        let trimmed = raw.trim();
        if let Some(comment) = trimmed.strip_prefix('#') {
            // Also inside a continuation: Docker drops comment lines there.
            file.comments.push(comment.trim().to_string());
            continue;
        }
        if trimmed.is_empty() && pending.is_none() {
            continue;
        }
        let (start, mut logical) = pending.take().unwrap_or((index + 1, String::new()));
        if let Some(body) = trimmed.strip_suffix('\\') {
            logical.push_str(body);
            logical.push(' ');
            pending = Some((start, logical));
            continue;
        }
        logical.push_str(trimmed);
        let logical = logical.trim().to_string();
        if logical.is_empty() {
            continue;
        }
        let (keyword, args) = logical
            .split_once(char::is_whitespace)
            .unwrap_or((&logical, ""));
        let instruction = Instruction {
            line: start,
            keyword: keyword.to_ascii_uppercase(),
            args: args.trim().to_string(),
        };
        if instruction.keyword == "FROM" {
            let words: Vec<&str> = instruction.args.split_whitespace().collect();
            let words: Vec<&str> = words.into_iter().filter(|w| !w.starts_with("--")).collect();
            let base = words.first().copied().unwrap_or_default().to_string();
            let name = match words.as_slice() {
                [_, as_, name] if as_.eq_ignore_ascii_case("as") => Some(name.to_string()),
                _ => None,
            };
            file.stages.push(Stage {
                name,
                base,
                line: instruction.line,
                instructions: Vec::new(),
            });
        } else if let Some(stage) = file.stages.last_mut() {
            stage.instructions.push(instruction);
        } else {
            file.global.push(instruction);
        }
    }
    assert!(
        pending.is_none(),
        "Dockerfile ends inside a `\\` continuation"
    );
    file
}

/// The words of a shell-form instruction, or the strings of an exec-form (JSON) one.
fn words(args: &str) -> Vec<String> {
    if args.starts_with('[') {
        serde_json::from_str::<Vec<String>>(args)
            .unwrap_or_else(|e| panic!("not a JSON array of strings: {args}: {e}"))
    } else {
        args.split_whitespace().map(str::to_string).collect()
    }
}

/// A COPY: its flags (`--from=x` → ("from", "x")), sources and destination.
struct Copy {
    line: usize,
    flags: BTreeMap<String, String>,
    sources: Vec<String>,
    dest: String,
}

fn copies(stage: &Stage) -> Vec<Copy> {
    stage
        .instructions
        .iter()
        .filter(|i| i.keyword == "COPY" || i.keyword == "ADD")
        .map(|i| {
            assert_eq!(
                i.keyword, "COPY",
                "Dockerfile line {}: use COPY, not ADD",
                i.line
            );
            let mut flags = BTreeMap::new();
            let mut rest = i.args.as_str();
            while let Some(flag) = rest.strip_prefix("--") {
                let (flag, tail) = flag.split_once(char::is_whitespace).unwrap_or((flag, ""));
                let (key, value) = flag.split_once('=').unwrap_or((flag, ""));
                flags.insert(key.to_string(), value.to_string());
                rest = tail.trim_start();
            }
            let mut paths = words(rest);
            assert!(
                paths.len() >= 2,
                "Dockerfile line {}: COPY needs a source and a destination",
                i.line
            );
            let dest = paths.pop().unwrap_or_default();
            Copy {
                line: i.line,
                flags,
                sources: paths,
                dest,
            }
        })
        .collect()
}

/// The `cargo build` commands of the builder stage: (instruction, its words from `cargo`).
fn cargo_builds(file: &Dockerfile) -> Vec<(Instruction, Vec<String>)> {
    file.stage(BUILDER)
        .instructions
        .iter()
        .filter(|i| i.keyword == "RUN")
        .flat_map(|i| {
            i.args
                .split([';', '&', '|'])
                .filter_map(|command| {
                    let words: Vec<String> =
                        command.split_whitespace().map(str::to_string).collect();
                    let at = words
                        .windows(2)
                        .position(|w| w[0] == "cargo" && w[1] == "build")?;
                    Some((i.clone(), words[at..].to_vec()))
                })
                .collect::<Vec<_>>()
        })
        .collect()
}

/// The values of `--flag X` / `--flag=X` (and the short form) in a command.
fn flag_values(words: &[String], long: &str, short: Option<&str>) -> Vec<String> {
    let mut values = Vec::new();
    let mut iter = words.iter();
    while let Some(word) = iter.next() {
        if let Some(value) = word.strip_prefix(&format!("{long}=")) {
            values.push(value.to_string());
        } else if (word == long || Some(word.as_str()) == short)
            && let Some(value) = iter.next()
        {
            values.push(value.clone());
        }
    }
    values
}

// ---------------------------------------------------------------- the workspace

/// One crate manifest, parsed line by line: `[section]` headers and `key = "value"`.
struct Manifest {
    dir: String,
    sections: Vec<(String, BTreeMap<String, String>)>,
}

impl Manifest {
    fn load(dir: &str) -> Manifest {
        let text = read(&root().join(dir).join("Cargo.toml"));
        let mut sections: Vec<(String, BTreeMap<String, String>)> = Vec::new();
        for line in text.lines() {
            let line = line.trim();
            if line.starts_with('[') {
                sections.push((line.to_string(), BTreeMap::new()));
            } else if let (Some((key, value)), Some((_, section))) =
                (line.split_once('='), sections.last_mut())
            {
                let value = value.trim();
                if let Some(value) = value.strip_prefix('"').and_then(|v| v.strip_suffix('"')) {
                    section.insert(key.trim().to_string(), value.to_string());
                }
            }
        }
        Manifest {
            dir: dir.to_string(),
            sections,
        }
    }

    fn values(&self, header: &str, key: &str) -> Vec<String> {
        self.sections
            .iter()
            .filter(|(h, _)| h == header)
            .filter_map(|(_, s)| s.get(key).cloned())
            .collect()
    }

    fn package(&self, key: &str) -> String {
        self.values("[package]", key)
            .into_iter()
            .next()
            .unwrap_or_else(|| panic!("{}/Cargo.toml: no [package] {key}", self.dir))
    }

    /// Explicit `[[bin]]` names, else the package name when `src/main.rs` exists.
    fn bins(&self) -> Vec<String> {
        let mut bins = self.values("[[bin]]", "name");
        if bins.is_empty() && root().join(&self.dir).join("src/main.rs").is_file() {
            bins.push(self.package("name"));
        }
        bins
    }

    /// Files cargo requires to load this manifest: the crate roots and declared benches.
    fn required_files(&self) -> Vec<String> {
        let mut files: Vec<String> = ["src/lib.rs", "src/main.rs"]
            .into_iter()
            .filter(|f| root().join(&self.dir).join(f).is_file())
            .map(str::to_string)
            .collect();
        for (header, kind) in [("[[bench]]", "benches"), ("[[test]]", "tests")] {
            for section in self.sections.iter().filter(|(h, _)| h == header) {
                let file = match (section.1.get("path"), section.1.get("name")) {
                    (Some(path), _) => path.clone(),
                    (None, Some(name)) => format!("{kind}/{name}.rs"),
                    (None, None) => continue,
                };
                files.push(file);
            }
        }
        for bin in self.sections.iter().filter(|(h, _)| h == "[[bin]]") {
            if let Some(path) = bin.1.get("path")
                && !files.contains(path)
            {
                files.push(path.clone());
            }
        }
        if root().join(&self.dir).join("build.rs").is_file() {
            files.push("build.rs".to_string());
        }
        files
    }
}

/// The members of the root Cargo.toml's `[workspace] members = [...]`.
fn members() -> Vec<String> {
    let text = read(&root().join("Cargo.toml"));
    let start = text
        .find("members")
        .expect("root Cargo.toml: no workspace members");
    let list = &text[start..];
    let open = list.find('[').expect("members = [");
    let close = list.find(']').expect("members = [...]");
    list[open + 1..close]
        .split(',')
        .map(|m| m.trim().trim_matches('"').to_string())
        .filter(|m| !m.is_empty())
        .collect()
}

fn manifests() -> Vec<Manifest> {
    members().iter().map(|m| Manifest::load(m)).collect()
}

// -------------------------------------------------------------------- .dockerignore

/// `.dockerignore` rules in order: (pattern segments, is an exception `!`).
fn dockerignore() -> Vec<(Vec<String>, bool)> {
    read(&root().join(".dockerignore"))
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(|l| {
            let (pattern, exception) = match l.strip_prefix('!') {
                Some(p) => (p.trim(), true),
                None => (l, false),
            };
            let segments = pattern
                .trim_matches('/')
                .split('/')
                .filter(|s| !s.is_empty() && *s != ".")
                .map(str::to_string)
                .collect();
            (segments, exception)
        })
        .collect()
}

/// `*` and `?` within one path segment.
fn glob_segment(pattern: &[u8], name: &[u8]) -> bool {
    match (pattern.first(), name.first()) {
        (None, None) => true,
        (Some(b'*'), _) => {
            glob_segment(&pattern[1..], name)
                || (!name.is_empty() && glob_segment(pattern, &name[1..]))
        }
        (Some(b'?'), Some(_)) => glob_segment(&pattern[1..], &name[1..]),
        (Some(p), Some(n)) if p == n => glob_segment(&pattern[1..], &name[1..]),
        _ => false,
    }
}

/// Segment-wise match; `**` matches any number of segments.
fn glob_path(pattern: &[String], path: &[&str]) -> bool {
    match pattern.first() {
        None => path.is_empty(),
        Some(p) if p == "**" => {
            glob_path(&pattern[1..], path) || (!path.is_empty() && glob_path(pattern, &path[1..]))
        }
        Some(p) => {
            !path.is_empty()
                && glob_segment(p.as_bytes(), path[0].as_bytes())
                && glob_path(&pattern[1..], &path[1..])
        }
    }
}

/// Whether Docker sends `path` (relative to the root) in the build context: the last rule
/// matching the path or one of its parent directories decides (as moby's patternmatcher).
fn in_context(rules: &[(Vec<String>, bool)], path: &str) -> bool {
    let segments: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).collect();
    let mut included = true;
    for (pattern, exception) in rules {
        let matches = (1..=segments.len()).any(|n| glob_path(pattern, &segments[..n]));
        if matches {
            included = *exception;
        }
    }
    included
}

/// Files under `dir` (relative paths), skipping build output and local data (`target`,
/// `kss-data`: both in .gitignore) and nested crates that are not workspace members
/// (e.g. the fuzz crate).
fn source_files(dir: &str, members: &BTreeSet<String>, out: &mut Vec<String>) {
    let path = root().join(dir);
    let entries =
        std::fs::read_dir(&path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()));
    for entry in entries {
        let entry = entry.expect("directory entry");
        let name = entry.file_name().to_string_lossy().into_owned();
        let rel = format!("{dir}/{name}");
        let kind = entry.file_type().expect("file type");
        if kind.is_dir() {
            let nested_crate = root().join(&rel).join("Cargo.toml").is_file();
            if name == "target" || name == "kss-data" || (nested_crate && !members.contains(&rel)) {
                continue;
            }
            source_files(&rel, members, out);
        } else {
            out.push(rel);
        }
    }
}

// ------------------------------------------------------------------------- tests

#[test]
fn base_images_are_pinned() {
    let file = Dockerfile::load();
    assert!(!file.stages.is_empty(), "Dockerfile has no FROM");
    let mut earlier = BTreeSet::new();
    for stage in &file.stages {
        let base = &stage.base;
        if earlier.contains(base) {
            continue; // a stage of this file
        }
        assert!(
            !base.contains('$'),
            "Dockerfile line {}: FROM {base}: pin the image literally, not through an ARG",
            stage.line
        );
        let (name, digest) = match base.split_once('@') {
            Some((name, digest)) => (name, Some(digest)),
            None => (base.as_str(), None),
        };
        let last = name.rsplit('/').next().unwrap_or(name);
        let tag = last.split_once(':').map(|(_, tag)| tag);
        assert!(
            tag.is_some() || digest.is_some(),
            "Dockerfile line {}: FROM {base} is not pinned (give a tag or a digest)",
            stage.line
        );
        assert_ne!(
            tag,
            Some("latest"),
            "Dockerfile line {}: FROM {base}: `latest` is not a pin",
            stage.line
        );
        if let Some(digest) = digest {
            let hex = digest.strip_prefix("sha256:").unwrap_or_default();
            assert!(
                hex.len() == 64 && hex.bytes().all(|b| b.is_ascii_hexdigit()),
                "Dockerfile line {}: FROM {base}: malformed digest",
                stage.line
            );
        }
        if let Some(name) = &stage.name {
            earlier.insert(name.clone());
        }
    }
}

#[test]
fn copy_sources_exist_and_are_in_the_build_context() {
    let file = Dockerfile::load();
    let rules = dockerignore();
    let members: BTreeSet<String> = members().into_iter().collect();
    let mut checked = 0;
    for stage in &file.stages {
        for copy in copies(stage)
            .iter()
            .filter(|c| !c.flags.contains_key("from"))
        {
            for source in &copy.sources {
                assert!(
                    !source.contains(['*', '?', '$']),
                    "Dockerfile line {}: COPY {source}: name the path literally",
                    copy.line
                );
                let path = root().join(source);
                assert!(
                    path.exists(),
                    "Dockerfile line {}: COPY source {source} does not exist in the workspace",
                    copy.line
                );
                assert!(
                    in_context(&rules, source),
                    "Dockerfile line {}: COPY source {source} is excluded by .dockerignore",
                    copy.line
                );
                if path.is_dir() {
                    let mut files = Vec::new();
                    source_files(source.trim_end_matches('/'), &members, &mut files);
                    let excluded: Vec<&String> =
                        files.iter().filter(|f| !in_context(&rules, f)).collect();
                    assert!(
                        excluded.is_empty(),
                        "Dockerfile line {}: COPY {source}: .dockerignore leaves out {excluded:?}",
                        copy.line
                    );
                }
                checked += 1;
            }
        }
    }
    assert!(checked > 0, "no COPY from the build context found");
    // What the build needs and nothing it must not see.
    for needed in ["Cargo.toml", "Cargo.lock"] {
        assert!(
            in_context(&rules, needed),
            ".dockerignore leaves out {needed}"
        );
    }
    for private in [
        ".git/config",
        "target/debug/kss",
        "keyserver/server/target/x",
    ] {
        assert!(
            !in_context(&rules, private),
            ".dockerignore lets {private} into the build context"
        );
    }
}

/// The dependency stage: everything the builder stage does before its first `cargo build`.
#[test]
fn dependency_stage_knows_every_workspace_member() {
    let file = Dockerfile::load();
    let builder = file.stage(BUILDER);
    let first_build = cargo_builds(&file)
        .first()
        .map(|(i, _)| i.line)
        .expect("the builder stage runs no `cargo build`");
    let deps_copies: Vec<Copy> = copies(builder)
        .into_iter()
        .filter(|c| c.line < first_build && !c.flags.contains_key("from"))
        .collect();
    let copied: BTreeSet<String> = deps_copies
        .iter()
        .flat_map(|c| c.sources.iter())
        .map(|s| s.trim_end_matches('/').to_string())
        .collect();
    let stub_text: String = builder
        .instructions
        .iter()
        .filter(|i| i.keyword == "RUN" && i.line <= first_build)
        .map(|i| i.args.as_str())
        .collect::<Vec<_>>()
        .join("\n");
    for needed in ["Cargo.toml", "Cargo.lock"] {
        assert!(
            copied.contains(needed),
            "the dependency stage must copy {needed} before `cargo build`"
        );
    }
    for manifest in manifests() {
        let dir = &manifest.dir;
        if copied.contains(dir.as_str()) {
            continue; // the whole crate, stubs unnecessary
        }
        assert!(
            copied.contains(&format!("{dir}/Cargo.toml")),
            "workspace member {dir} is not in the Dockerfile's dependency stage: add \
             `COPY {dir}/Cargo.toml {dir}/` and stubs for its targets before the first \
             `cargo build` (cargo loads every member)"
        );
        for required in manifest.required_files() {
            let path = format!("{dir}/{required}");
            let provided = copied.contains(path.as_str()) || stub_text.contains(path.as_str());
            assert!(
                provided,
                "the dependency stage neither copies nor stubs {path} (cargo needs it to load \
                 {dir}/Cargo.toml)"
            );
        }
    }
}

#[test]
fn the_real_build_rebuilds_every_stubbed_crate() {
    let file = Dockerfile::load();
    let builder = file.stage(BUILDER);
    let builds = cargo_builds(&file);
    assert_eq!(
        builds.len(),
        2,
        "expected two `cargo build`s in the builder: dependencies (stubs), then sources"
    );
    let (deps, real) = (&builds[0], &builds[1]);
    assert_eq!(
        deps.1, real.1,
        "the two `cargo build`s must build the same things, or the dependency layer \
         caches the wrong dependencies"
    );
    for flag in ["--release", "--locked"] {
        assert!(
            real.1.contains(&flag.to_string()),
            "cargo build without {flag}"
        );
    }
    // Sources copied between the two builds; every stub they replace must be touched
    // (COPY keeps older modification times: cargo would keep the stub build).
    let sources: Vec<String> = copies(builder)
        .into_iter()
        .filter(|c| c.line > deps.0.line && c.line < real.0.line && !c.flags.contains_key("from"))
        .flat_map(|c| c.sources)
        .collect();
    assert!(
        !sources.is_empty(),
        "nothing is copied after the dependency build"
    );
    let touched: Vec<String> = builder
        .instructions
        .iter()
        .filter(|i| i.keyword == "RUN" && i.line > deps.0.line && i.line <= real.0.line)
        .flat_map(|i| {
            i.args
                .split([';', '&', '|'])
                .map(str::trim)
                .filter(|c| c.starts_with("touch "))
                .flat_map(|c| c.split_whitespace().skip(1).map(str::to_string))
                .collect::<Vec<_>>()
        })
        .collect();
    for manifest in manifests() {
        let dir = &manifest.dir;
        let replaced = sources
            .iter()
            .any(|s| dir == s || dir.starts_with(&format!("{}/", s.trim_end_matches('/'))));
        if !replaced {
            continue;
        }
        for root_file in ["src/lib.rs", "src/main.rs"] {
            let path = format!("{dir}/{root_file}");
            let stubbed = deps.0.args.contains(&path);
            if stubbed && root().join(&path).is_file() {
                assert!(
                    touched.contains(&path),
                    "{path} is a stub in the dependency stage and copied for real later, but \
                     not touched before the second `cargo build`: the image would ship the stub"
                );
            }
        }
    }
}

#[test]
fn built_packages_and_binaries_exist() {
    let file = Dockerfile::load();
    let manifests = manifests();
    let by_name: BTreeMap<String, &Manifest> =
        manifests.iter().map(|m| (m.package("name"), m)).collect();
    for (instruction, words) in cargo_builds(&file) {
        let packages = flag_values(&words, "--package", Some("-p"));
        let bins = flag_values(&words, "--bin", None);
        assert!(
            !packages.is_empty() && !bins.is_empty(),
            "Dockerfile line {}: name the packages (-p) and binaries (--bin) built",
            instruction.line
        );
        for package in &packages {
            assert!(
                by_name.contains_key(package),
                "Dockerfile line {}: -p {package} is not a workspace package ({:?})",
                instruction.line,
                by_name.keys().collect::<Vec<_>>()
            );
        }
        let available: BTreeSet<String> = packages
            .iter()
            .filter_map(|p| by_name.get(p))
            .flat_map(|m| m.bins())
            .collect();
        for bin in &bins {
            assert!(
                available.contains(bin),
                "Dockerfile line {}: --bin {bin} is not a [[bin]] of {packages:?} ({available:?})",
                instruction.line
            );
        }
        for (_, bin) in IMAGES {
            assert!(
                bins.iter().any(|b| b == bin),
                "Dockerfile line {}: the image binary {bin} is not built",
                instruction.line
            );
        }
    }
}

#[test]
fn images_run_as_nonroot_with_the_binary_they_copy() {
    let file = Dockerfile::load();
    let builder = file.stage(BUILDER);
    let builder_runs: String = builder
        .instructions
        .iter()
        .filter(|i| i.keyword == "RUN")
        .map(|i| i.args.as_str())
        .collect::<Vec<_>>()
        .join("\n");
    for (stage, bin) in IMAGES {
        let user = file
            .effective(stage, "USER")
            .unwrap_or_else(|| panic!("stage {stage}: no USER (it would run as root)"));
        let (uid, gid) = user.args.split_once(':').unwrap_or((&user.args, NONROOT));
        assert!(
            uid == NONROOT && gid == NONROOT,
            "Dockerfile line {}: stage {stage} runs as {}, not the numeric nonroot user \
             {NONROOT}:{NONROOT} (a numeric user lets Kubernetes verify runAsNonRoot)",
            user.line,
            user.args
        );

        let (entrypoint, entry) = exec_form(&file, stage, "ENTRYPOINT");
        let program = entry.first().cloned().unwrap_or_default();
        assert_eq!(
            Path::new(&program).file_name().and_then(|n| n.to_str()),
            Some(bin),
            "Dockerfile line {}: stage {stage} runs {program}, not {bin}",
            entrypoint.line
        );
        // The binary comes from the builder, to exactly that path.
        let copy = file
            .chain(stage)
            .into_iter()
            .flat_map(copies)
            .find(|c| {
                c.flags.get("from").map(String::as_str) == Some(BUILDER)
                    && (c.dest == program
                        || (c.dest.ends_with('/') && format!("{}{bin}", c.dest) == program))
            })
            .unwrap_or_else(|| {
                panic!("stage {stage}: nothing is copied from the builder to {program}")
            });
        assert_eq!(copy.sources.len(), 1, "Dockerfile line {}", copy.line);
        let source = &copy.sources[0];
        assert_eq!(
            Path::new(source).file_name().and_then(|n| n.to_str()),
            Some(bin),
            "Dockerfile line {}: copies {source} as {program}",
            copy.line
        );
        assert!(
            builder_runs.contains(&format!("target/release/{bin}")),
            "the builder never handles target/release/{bin} (where {source} comes from)"
        );
        if let Some(dir) = Path::new(source).parent().and_then(|p| p.to_str())
            && !dir.ends_with("target/release")
        {
            assert!(
                builder_runs.contains(&format!("{dir}/")),
                "the builder never puts anything into {dir}/ (COPY --from={BUILDER} {source})"
            );
        }
    }
}

/// The stage's `keyword` instruction (inherited from its base stages if need be), which
/// must be in exec form (the image has no shell), and its strings.
fn exec_form(file: &Dockerfile, stage: &str, keyword: &str) -> (Instruction, Vec<String>) {
    let instruction = file
        .effective(stage, keyword)
        .unwrap_or_else(|| panic!("stage {stage}: no {keyword}"));
    assert!(
        instruction.args.starts_with('['),
        "Dockerfile line {}: {keyword} in exec form (the image has no shell)",
        instruction.line
    );
    let words = words(&instruction.args);
    (instruction, words)
}

/// `target/debug/<bin>`, located like `harness::kss_bin()`.
fn debug_bin(bin: &str) -> PathBuf {
    let kss = harness::kss_bin().unwrap_or_else(|e| {
        panic!("{e}: build the binaries with `cargo build -p kss-server --bin kss -p kss-operator --bin kss-operator`")
    });
    let path = kss.with_file_name(bin);
    assert!(
        path.is_file(),
        "{} not found: build it with `cargo build -p kss-server --bin kss -p kss-operator \
         --bin kss-operator`",
        path.display()
    );
    path
}

#[test]
fn default_commands_are_real_subcommands() {
    let file = Dockerfile::load();
    for (stage, bin) in IMAGES {
        let (cmd, args) = exec_form(&file, stage, "CMD");
        assert!(!args.is_empty(), "Dockerfile line {}: empty CMD", cmd.line);
        let path = debug_bin(bin);
        let out = Command::new(&path)
            .args(&args)
            .arg("--help")
            .output()
            .unwrap_or_else(|e| panic!("running {}: {e}", path.display()));
        assert!(
            out.status.success(),
            "Dockerfile line {}: `{bin} {} --help` failed: the default CMD is not a subcommand \
             of {bin}:\n{}{}",
            cmd.line,
            args.join(" "),
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

#[test]
fn documented_tags_are_the_deployed_images() {
    let file = Dockerfile::load();
    let version = |dir: &str| Manifest::load(dir).package("version");
    let operator_version = version("operator");
    let server_version = version("keyserver/server");

    // `docker build --target <stage> -t <tag> .` in the comments.
    let mut documented: BTreeMap<String, String> = BTreeMap::new();
    for comment in &file.comments {
        let words: Vec<String> = comment.split_whitespace().map(str::to_string).collect();
        if !words
            .windows(2)
            .any(|w| w[0] == "docker" && w[1] == "build")
        {
            continue;
        }
        let targets = flag_values(&words, "--target", None);
        let tags = flag_values(&words, "--tag", Some("-t"));
        if let (Some(target), Some(tag)) = (targets.first(), tags.first()) {
            assert!(
                file.has_stage(target),
                "documented `docker build --target {target}`: no such stage"
            );
            documented.insert(target.clone(), tag.clone());
        }
    }
    let expected_operator = format!("ghcr.io/kss-project/kss-operator:{operator_version}");
    assert_eq!(
        documented.get("kss").map(String::as_str),
        Some(kss_operator::desired::DEFAULT_IMAGE),
        "the Dockerfile's documented kss tag must be the operator's DEFAULT_IMAGE"
    );
    assert_eq!(
        documented.get("kss-operator"),
        Some(&expected_operator),
        "the Dockerfile's documented kss-operator tag"
    );
    assert!(
        kss_operator::desired::DEFAULT_IMAGE.ends_with(&format!(":{server_version}")),
        "DEFAULT_IMAGE {} does not carry the kss-server version {server_version}",
        kss_operator::desired::DEFAULT_IMAGE
    );

    // The install bundle deploys the same images.
    let bundle = read(&root().join("manifests/install/30-operator.yaml"));
    let images: Vec<&str> = bundle
        .lines()
        .filter_map(|l| l.trim().strip_prefix("image:"))
        .map(str::trim)
        .collect();
    assert_eq!(
        images,
        vec![expected_operator.as_str()],
        "manifests/install/30-operator.yaml: the operator image must be \
         ghcr.io/kss-project/kss-operator:<kss-operator version>"
    );
    let lines: Vec<&str> = bundle.lines().map(str::trim).collect();
    let keyserver_image = lines
        .windows(2)
        .find(|w| w[0] == "- name: KSS_KEYSERVER_IMAGE")
        .and_then(|w| w[1].strip_prefix("value:"))
        .map(str::trim);
    assert_eq!(
        keyserver_image,
        Some(kss_operator::desired::DEFAULT_IMAGE),
        "manifests/install/30-operator.yaml: KSS_KEYSERVER_IMAGE must be DEFAULT_IMAGE"
    );

    // The VERSION build argument (image labels) is the crates' version.
    let arg = file
        .global
        .iter()
        .find(|i| i.keyword == "ARG" && i.args.starts_with("VERSION="))
        .expect("Dockerfile: no global `ARG VERSION=...`");
    assert_eq!(
        arg.args.trim_start_matches("VERSION="),
        operator_version,
        "Dockerfile line {}: ARG VERSION",
        arg.line
    );
    assert_eq!(
        operator_version, server_version,
        "kss-operator and kss-server versions"
    );
}

#[test]
fn dockerignore_matching_follows_docker() {
    let rules = |text: &str| -> Vec<(Vec<String>, bool)> {
        text.lines()
            .map(|l| {
                let (p, e) = l.strip_prefix('!').map_or((l, false), |p| (p, true));
                (p.split('/').map(str::to_string).collect(), e)
            })
            .collect()
    };
    let whitelist = rules("*\n!keyserver\n!e2e/Cargo.toml\n**/target");
    assert!(in_context(&whitelist, "keyserver/server/src/main.rs"));
    assert!(in_context(&whitelist, "e2e/Cargo.toml"));
    assert!(!in_context(&whitelist, "e2e/src/lib.rs"));
    assert!(!in_context(&whitelist, "README.md"));
    assert!(!in_context(&whitelist, "keyserver/server/target/debug/kss"));
    assert!(!in_context(&whitelist, "target"));
    let plain = rules("target\n*.md");
    assert!(!in_context(&plain, "target/release/kss"));
    assert!(!in_context(&plain, "README.md"));
    assert!(in_context(&plain, "keyserver/README.md"));
    assert!(in_context(&plain, "keyserver/target/x"));
}
