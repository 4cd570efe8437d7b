//! `kss loadgen`: drives a keyserver with signed approval requests and reports throughput and
//! latency.
//!
//! Before the run it onboards `--profiles` fresh profiles and encrypts
//! `--distinct-ciphertexts` file keys to each (plus one shared "repeat" ciphertext per profile
//! when `--repeat-share` > 0). Nothing that must be fresh is prepared in advance: every request
//! gets its own nonce and timestamp and is signed in the loop. Returned shares are verified
//! and combined only with `--verify` (it costs the client about what the keyserver spends).
//!
//! Pacing: `--rate 0` runs flat out (each of `--concurrency` workers sends its next request
//! when the previous one is answered; latency is measured from just before the request is
//! built and signed). `--rate R` is open-loop: request `i` is due at `start + i/R` and its
//! latency is measured from that due time, so a server that falls behind shows it in the
//! latencies (no coordinated omission), up to `--concurrency` requests in flight. Requests
//! are spread round-robin over `--connections` HTTP/2 connections, themselves spread over
//! `--endpoint` and every `--also-endpoint` (instances of one cluster).

use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use hdrhistogram::Histogram;
use kss_crypto::{KeyserverId, VerifiedCiphertext, Zeroizing};
use kss_proto::v1::{Decision, MetaInfo, RequestBody, RequestType};
use rand::{Rng, RngCore};
use serde::Serialize;
use tokio::task::JoinSet;

use crate::cli::{ConnectArgs, RequestKind};
use crate::connection::{KssClient, install_crypto_provider};
use crate::error::ClientError;
use crate::profile::Profile;
use crate::protocol::{
    ciphertext_id, combine_file_key, decision_name, deny_reason_name, encrypt_file_key,
    fresh_nonce, now_ms, sign_request,
};

/// Run length when neither `--duration` nor `--requests` is given.
pub const DEFAULT_DURATION_SECS: f64 = 10.0;

/// `kss loadgen` flags.
#[derive(Clone, Debug, clap::Args)]
pub struct LoadgenArgs {
    #[command(flatten)]
    pub connect: ConnectArgs,
    /// More instances of the same keyserver (cluster mode), with the same CA and server
    /// name; the connections are spread over --endpoint and these, round-robin.
    #[arg(long = "also-endpoint", value_name = "URL")]
    pub also_endpoints: Vec<String>,
    /// The keyserver's id (default: asked with GetInfo).
    #[arg(long, value_name = "ID")]
    pub keyserver_id: Option<String>,
    /// Fresh profiles to onboard before the run; requests cycle over them.
    #[arg(long, value_name = "N", default_value_t = 16)]
    pub profiles: usize,
    /// Requests in flight at once.
    #[arg(long, value_name = "C", default_value_t = 64)]
    pub concurrency: usize,
    /// HTTP/2 connections, used round-robin.
    #[arg(long, value_name = "N", default_value_t = 4)]
    pub connections: usize,
    /// Run for this many seconds (default: 10 unless --requests).
    #[arg(long, value_name = "SECS", conflicts_with = "requests")]
    pub duration: Option<f64>,
    /// Send this many requests.
    #[arg(long, value_name = "N")]
    pub requests: Option<u64>,
    /// Send for this many seconds first without counting anything (connections, the
    /// server's thread pools and caches warm up); --duration is measured after it.
    #[arg(long, value_name = "SECS", default_value_t = 0.0)]
    pub warmup: f64,
    /// Target requests per second, open-loop; 0 = flat out.
    #[arg(long, value_name = "R", default_value_t = 0.0)]
    pub rate: f64,
    /// Distinct ciphertexts pre-encrypted per profile (decrypt).
    #[arg(long, value_name = "K", default_value_t = 256)]
    pub distinct_ciphertexts: usize,
    /// Fraction (0.0–1.0) of requests that reuse one ciphertext per profile instead of
    /// cycling through the distinct ones.
    #[arg(long, value_name = "F", default_value_t = 0.0)]
    pub repeat_share: f64,
    /// The auth_meta path of every request (complete).
    #[arg(long, value_name = "PATH", default_value = "batch/file.txt")]
    pub path: String,
    /// The request type.
    #[arg(
        long = "type",
        value_name = "TYPE",
        value_enum,
        default_value = "decrypt"
    )]
    pub request_type: RequestKind,
    /// Also print, every SECS, one JSON line on stderr with the answers and latency
    /// percentiles of the requests answered in that interval (0 = only the final report):
    /// how a long run drifts.
    #[arg(long, value_name = "SECS", default_value_t = 0.0)]
    pub report_every: f64,
    /// Verify every approved decryption share and the recovered key (client CPU: see above).
    #[arg(long)]
    pub verify: bool,
    /// Print the report as one JSON object instead of a table.
    #[arg(long)]
    pub json: bool,
}

/// Latency percentiles, in milliseconds.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct Latency {
    pub p50: f64,
    pub p90: f64,
    pub p99: f64,
    pub p999: f64,
    pub max: f64,
    pub mean: f64,
}

/// What a load run measured.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct LoadReport {
    pub endpoint: String,
    pub keyserver_id: String,
    pub request_type: String,
    pub profiles: usize,
    pub connections: usize,
    pub concurrency: usize,
    /// Target rate (requests/s); 0 = flat out.
    pub target_rate: f64,
    pub distinct_ciphertexts: usize,
    pub repeat_share: f64,
    /// Seconds spent onboarding the profiles.
    pub onboard_seconds: f64,
    /// Seconds spent encrypting the ciphertexts.
    pub encrypt_seconds: f64,
    /// Requests sent (answered or failed).
    pub sent: u64,
    pub approved: u64,
    pub denied: u64,
    /// Denials by reason name ("policy", "quota", ...).
    pub denied_by_reason: BTreeMap<String, u64>,
    /// Requests that ended in a gRPC error.
    pub errors: u64,
    /// Errors by gRPC code name ("Unavailable", "DeadlineExceeded", ...).
    pub errors_by_code: BTreeMap<String, u64>,
    /// With `--verify`: approved shares that verified and combined to the right key.
    pub verified: u64,
    /// With `--verify`: approved answers whose share did not verify or combine correctly.
    pub verify_failures: u64,
    pub elapsed_seconds: f64,
    /// CPU seconds (user and system, every thread) this load generator used while sending,
    /// warm-up included: what it took from a machine it shares with the server.
    pub cpu_seconds: f64,
    /// All answered requests (approved + denied) per second.
    pub throughput: f64,
    /// Approved requests per second.
    pub approved_per_second: f64,
    /// Latency of answered requests (approved and denied; errors excluded).
    pub latency_ms: Latency,
}

impl LoadReport {
    /// The report as one JSON object.
    pub fn to_json(&self) -> String {
        serde_json::to_string(self).unwrap_or_default()
    }
}

impl fmt::Display for LoadReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let rate = if self.target_rate > 0.0 {
            format!("{}/s open-loop", self.target_rate)
        } else {
            "flat out".to_owned()
        };
        writeln!(
            f,
            "kss loadgen: {} requests to {} (keyserver {})",
            self.request_type, self.endpoint, self.keyserver_id
        )?;
        writeln!(
            f,
            "  {} profiles, {} connections, concurrency {}, rate {rate}",
            self.profiles, self.connections, self.concurrency
        )?;
        if self.request_type == "decrypt" {
            writeln!(
                f,
                "  {} distinct ciphertexts per profile, repeat share {:.2}",
                self.distinct_ciphertexts, self.repeat_share
            )?;
        }
        writeln!(
            f,
            "  setup: onboarding {:.2} s, encrypting {:.2} s",
            self.onboard_seconds, self.encrypt_seconds
        )?;
        writeln!(f)?;
        writeln!(f, "  {:<14}{:>12.2} s", "elapsed", self.elapsed_seconds)?;
        writeln!(
            f,
            "  {:<14}{:>12.2} s   (this load generator, warm-up included)",
            "cpu", self.cpu_seconds
        )?;
        writeln!(f, "  {:<14}{:>12}", "sent", self.sent)?;
        writeln!(
            f,
            "  {:<14}{:>12}   {:.1}/s",
            "approved", self.approved, self.approved_per_second
        )?;
        let reasons = self
            .denied_by_reason
            .iter()
            .map(|(r, n)| format!("{r} {n}"))
            .collect::<Vec<_>>()
            .join(", ");
        if reasons.is_empty() {
            writeln!(f, "  {:<14}{:>12}", "denied", self.denied)?;
        } else {
            writeln!(f, "  {:<14}{:>12}   ({reasons})", "denied", self.denied)?;
        }
        let codes = self
            .errors_by_code
            .iter()
            .map(|(c, n)| format!("{c} {n}"))
            .collect::<Vec<_>>()
            .join(", ");
        if codes.is_empty() {
            writeln!(f, "  {:<14}{:>12}", "errors", self.errors)?;
        } else {
            writeln!(f, "  {:<14}{:>12}   ({codes})", "errors", self.errors)?;
        }
        if self.verified + self.verify_failures > 0 {
            writeln!(
                f,
                "  {:<14}{:>12}   ({} failed)",
                "verified", self.verified, self.verify_failures
            )?;
        }
        writeln!(f, "  {:<14}{:>12.1} req/s", "throughput", self.throughput)?;
        let l = &self.latency_ms;
        writeln!(
            f,
            "  {:<14}p50 {:.2}  p90 {:.2}  p99 {:.2}  p99.9 {:.2}  max {:.2}  mean {:.2}",
            "latency ms", l.p50, l.p90, l.p99, l.p999, l.max, l.mean
        )
    }
}

/// One onboarded profile and what is sent for it.
struct LoadProfile {
    profile: Profile,
    /// The fixed part of every request body (nonce and timestamp are filled per request).
    template: RequestBody,
    /// Distinct ciphertexts (decrypt only).
    ciphertexts: Vec<CtEntry>,
    /// The ciphertext reused by `--repeat-share` of the requests.
    repeat: Option<CtEntry>,
}

struct CtEntry {
    bytes: Vec<u8>,
    id: Vec<u8>,
    /// With `--verify`: the verified ciphertext and its plaintext.
    check: Option<(VerifiedCiphertext, Zeroizing<Vec<u8>>)>,
}

#[derive(Default)]
struct WorkerStats {
    sent: u64,
    approved: u64,
    denied: BTreeMap<String, u64>,
    errors: BTreeMap<String, u64>,
    verified: u64,
    verify_failures: u64,
    latency_us: Option<Histogram<u64>>,
}

fn new_histogram() -> anyhow::Result<Histogram<u64>> {
    // 1 µs to 1 hour, 3 significant digits.
    Histogram::<u64>::new_with_bounds(1, 3_600_000_000, 3).context("creating the histogram")
}

struct Plan {
    profiles: Vec<LoadProfile>,
    clients: Vec<KssClient>,
    rate: f64,
    requests: Option<u64>,
    deadline_after: Option<Duration>,
    /// Requests due before `start + warmup` are sent but not counted.
    warmup: Duration,
    repeat_share: f64,
    verify: bool,
    next: AtomicU64,
    /// Signalled when every worker is done (the interval reporter prints its last line).
    finished: tokio::sync::Notify,
    /// With `--report-every`: what was answered since the last interval's line.
    interval: Option<std::sync::Mutex<Interval>>,
}

/// The answers of one `--report-every` interval.
struct Interval {
    latency_us: Histogram<u64>,
    approved: u64,
    denied: u64,
    errors: u64,
}

impl Interval {
    fn new() -> anyhow::Result<Self> {
        Ok(Interval {
            latency_us: new_histogram()?,
            approved: 0,
            denied: 0,
            errors: 0,
        })
    }

    /// One JSON line: seconds since the measured start, counts, percentiles in ms.
    fn line(&self, at_seconds: f64) -> String {
        let h = &self.latency_us;
        let ms = |q: f64| {
            if h.is_empty() {
                0.0
            } else {
                h.value_at_quantile(q) as f64 / 1000.0
            }
        };
        serde_json::json!({
            "at_seconds": (at_seconds * 10.0).round() / 10.0,
            "approved": self.approved,
            "denied": self.denied,
            "errors": self.errors,
            "p50_ms": ms(0.50),
            "p99_ms": ms(0.99),
            "p999_ms": ms(0.999),
            "max_ms": if h.is_empty() { 0.0 } else { h.max() as f64 / 1000.0 },
        })
        .to_string()
    }
}

/// Prints the interval's line every `every` until `done` is set; the last, partial
/// interval is printed too.
async fn report_intervals(plan: Arc<Plan>, start: tokio::time::Instant, every: Duration) {
    let Some(interval) = &plan.interval else {
        return;
    };
    let measured_from = start + plan.warmup;
    tokio::time::sleep_until(measured_from).await;
    let mut ticks = tokio::time::interval_at(measured_from + every, every);
    loop {
        let finished = tokio::select! {
            _ = ticks.tick() => false,
            () = plan.finished.notified() => true,
        };
        let at = tokio::time::Instant::now()
            .saturating_duration_since(measured_from)
            .as_secs_f64();
        let taken = {
            let mut guard = interval.lock().unwrap_or_else(|p| p.into_inner());
            match Interval::new() {
                Ok(fresh) => std::mem::replace(&mut *guard, fresh),
                Err(_) => return,
            }
        };
        eprintln!("{}", taken.line(at));
        if finished {
            return;
        }
    }
}

/// Runs a load test and prints the report (a table, or one JSON object with `--json`) to
/// stdout; progress goes to stderr. Returns the report.
pub async fn loadgen(args: LoadgenArgs) -> anyhow::Result<LoadReport> {
    let report = run_load(&args).await?;
    if args.json {
        println!("{}", report.to_json());
    } else {
        print!("{report}");
    }
    Ok(report)
}

/// CPU time used by this process so far (every thread, user and system), in seconds.
fn process_cpu_seconds() -> f64 {
    let t = rustix::time::clock_gettime(rustix::time::ClockId::ProcessCPUTime);
    t.tv_sec as f64 + t.tv_nsec as f64 / 1e9
}

/// Runs a load test and returns the report without printing it (progress goes to stderr).
pub async fn run_load(args: &LoadgenArgs) -> anyhow::Result<LoadReport> {
    install_crypto_provider();
    check_args(args)?;
    let request_type = RequestType::from(args.request_type);
    let is_decrypt = request_type == RequestType::Decrypt;

    let ca = std::fs::read(&args.connect.ca)
        .with_context(|| format!("reading CA file {}", args.connect.ca.display()))?;
    let endpoints: Vec<&String> = std::iter::once(&args.connect.endpoint)
        .chain(&args.also_endpoints)
        .collect();
    let mut clients = Vec::with_capacity(args.connections);
    for i in 0..args.connections {
        let endpoint = endpoints[i % endpoints.len()];
        clients.push(KssClient::connect(endpoint, &ca, Some(&args.connect.server_name)).await?);
    }
    let keyserver_id: KeyserverId = match &args.keyserver_id {
        Some(id) => id
            .parse()
            .map_err(|e| anyhow::anyhow!("--keyserver-id: {e}"))?,
        None => {
            let info = clients[0].info().await?;
            info.keyserver_id
                .parse()
                .map_err(|e| anyhow::anyhow!("GetInfo returned keyserver id: {e}"))?
        }
    };

    eprintln!("loadgen: onboarding {} profiles", args.profiles);
    let onboard_start = Instant::now();
    let onboarded = onboard_profiles(&clients, &keyserver_id, args.profiles).await?;
    let onboard_seconds = onboard_start.elapsed().as_secs_f64();

    let encrypt_start = Instant::now();
    let with_repeat = is_decrypt && args.repeat_share > 0.0;
    if is_decrypt {
        eprintln!(
            "loadgen: encrypting {} ciphertexts",
            args.profiles * (args.distinct_ciphertexts + usize::from(with_repeat))
        );
    }
    let mut tasks = JoinSet::new();
    for (index, profile) in onboarded.into_iter().enumerate() {
        let count = if is_decrypt {
            args.distinct_ciphertexts
        } else {
            0
        };
        let verify = args.verify;
        let path = args.path.clone();
        tasks.spawn_blocking(move || {
            prepare_profile(profile, request_type, path, count, with_repeat, verify)
                .map(|p| (index, p))
        });
    }
    let mut prepared = Vec::with_capacity(args.profiles);
    while let Some(joined) = tasks.join_next().await {
        prepared.push(joined.context("preparing a profile")??);
    }
    prepared.sort_by_key(|(index, _)| *index);
    let profiles: Vec<LoadProfile> = prepared.into_iter().map(|(_, p)| p).collect();
    let encrypt_seconds = encrypt_start.elapsed().as_secs_f64();

    let warmup = Duration::from_secs_f64(args.warmup);
    let deadline_after = match (args.requests, args.duration) {
        (Some(_), _) => None,
        (None, Some(secs)) => Some(warmup + Duration::from_secs_f64(secs)),
        (None, None) => Some(warmup + Duration::from_secs_f64(DEFAULT_DURATION_SECS)),
    };
    let plan = Arc::new(Plan {
        profiles,
        clients,
        rate: args.rate,
        requests: args.requests,
        deadline_after,
        warmup,
        repeat_share: args.repeat_share,
        verify: args.verify,
        next: AtomicU64::new(0),
        interval: if args.report_every > 0.0 {
            Some(std::sync::Mutex::new(Interval::new()?))
        } else {
            None
        },
        finished: tokio::sync::Notify::new(),
    });

    eprintln!("loadgen: running");
    let cpu_at_start = process_cpu_seconds();
    let start = tokio::time::Instant::now();
    let mut workers = JoinSet::new();
    for _ in 0..args.concurrency {
        let plan = Arc::clone(&plan);
        workers.spawn(async move { worker(plan, start).await });
    }
    let reporter = (args.report_every > 0.0).then(|| {
        tokio::spawn(report_intervals(
            Arc::clone(&plan),
            start,
            Duration::from_secs_f64(args.report_every),
        ))
    });
    let mut total = WorkerStats {
        latency_us: Some(new_histogram()?),
        ..WorkerStats::default()
    };
    while let Some(joined) = workers.join_next().await {
        let stats = joined.context("a load worker failed")??;
        merge(&mut total, stats)?;
    }
    plan.finished.notify_one();
    if let Some(reporter) = reporter {
        reporter.await.context("the interval reporter failed")?;
    }
    let elapsed = tokio::time::Instant::now()
        .saturating_duration_since(start + warmup)
        .as_secs_f64();
    let cpu_seconds = process_cpu_seconds() - cpu_at_start;

    let hist = total.latency_us.take().unwrap_or(new_histogram()?);
    let ms = |us: u64| us as f64 / 1000.0;
    let denied: u64 = total.denied.values().sum();
    let errors: u64 = total.errors.values().sum();
    let answered = total.approved + denied;
    let per_second = |n: u64| {
        if elapsed > 0.0 {
            n as f64 / elapsed
        } else {
            0.0
        }
    };
    Ok(LoadReport {
        endpoint: args.connect.endpoint.clone(),
        keyserver_id: keyserver_id.to_hex(),
        request_type: request_kind_name(args.request_type).to_owned(),
        profiles: args.profiles,
        connections: args.connections,
        concurrency: args.concurrency,
        target_rate: args.rate,
        distinct_ciphertexts: if is_decrypt {
            args.distinct_ciphertexts
        } else {
            0
        },
        repeat_share: args.repeat_share,
        onboard_seconds,
        encrypt_seconds,
        sent: total.sent,
        approved: total.approved,
        denied,
        denied_by_reason: total.denied,
        errors,
        errors_by_code: total.errors,
        verified: total.verified,
        verify_failures: total.verify_failures,
        elapsed_seconds: elapsed,
        cpu_seconds,
        throughput: per_second(answered),
        approved_per_second: per_second(total.approved),
        latency_ms: if hist.is_empty() {
            Latency::default()
        } else {
            Latency {
                p50: ms(hist.value_at_quantile(0.50)),
                p90: ms(hist.value_at_quantile(0.90)),
                p99: ms(hist.value_at_quantile(0.99)),
                p999: ms(hist.value_at_quantile(0.999)),
                max: ms(hist.max()),
                mean: hist.mean() / 1000.0,
            }
        },
    })
}

fn check_args(args: &LoadgenArgs) -> anyhow::Result<()> {
    if args.profiles == 0 {
        bail!("--profiles must be at least 1");
    }
    if args.concurrency == 0 {
        bail!("--concurrency must be at least 1");
    }
    if args.connections == 0 {
        bail!("--connections must be at least 1");
    }
    if args.connections < 1 + args.also_endpoints.len() {
        bail!(
            "--connections {} is fewer than the {} endpoints: give at least one connection each",
            args.connections,
            1 + args.also_endpoints.len()
        );
    }
    if !(args.rate >= 0.0 && args.rate.is_finite()) {
        bail!("--rate must be a number >= 0");
    }
    if !(0.0..=1.0).contains(&args.repeat_share) {
        bail!("--repeat-share must be between 0.0 and 1.0");
    }
    if let Some(secs) = args.duration
        && !(secs > 0.0 && secs.is_finite())
    {
        bail!("--duration must be a number of seconds > 0");
    }
    if !(args.warmup >= 0.0 && args.warmup.is_finite()) {
        bail!("--warmup must be a number of seconds >= 0");
    }
    if args.request_type == RequestKind::Decrypt
        && args.distinct_ciphertexts == 0
        && args.repeat_share < 1.0
    {
        bail!("--distinct-ciphertexts must be at least 1 (or --repeat-share 1.0)");
    }
    Ok(())
}

fn request_kind_name(kind: RequestKind) -> &'static str {
    match kind {
        RequestKind::Decrypt => "decrypt",
        RequestKind::Search => "search",
        RequestKind::CreateProfile => "create_profile",
        RequestKind::CreateLocation => "create_location",
        RequestKind::Rename => "rename",
        RequestKind::SecureExport => "secure_export",
        RequestKind::StartSession => "start_session",
        RequestKind::ChangeProfile => "change_profile",
    }
}

async fn onboard_profiles(
    clients: &[KssClient],
    keyserver_id: &KeyserverId,
    count: usize,
) -> anyhow::Result<Vec<Profile>> {
    let mut tag = [0u8; 4];
    rand::rngs::OsRng.fill_bytes(&mut tag);
    let tag = hex::encode(tag);
    let mut tasks = JoinSet::new();
    let mut profiles = Vec::with_capacity(count);
    for index in 0..count {
        let client = clients[index % clients.len()].clone();
        let keyserver_id = *keyserver_id;
        let name = format!("loadgen-{tag}-{index}");
        tasks.spawn(async move {
            let profile = client
                .onboard(&keyserver_id, &name, None)
                .await
                .with_context(|| format!("onboarding profile {name}"))?;
            anyhow::Ok((index, profile))
        });
        // At most 8 onboardings in flight.
        if tasks.len() >= 8
            && let Some(joined) = tasks.join_next().await
        {
            profiles.push(joined.context("onboarding task")??);
        }
    }
    while let Some(joined) = tasks.join_next().await {
        profiles.push(joined.context("onboarding task")??);
    }
    profiles.sort_by_key(|(index, _)| *index);
    Ok(profiles.into_iter().map(|(_, p)| p).collect())
}

fn make_ciphertext(profile: &Profile, verify: bool) -> anyhow::Result<CtEntry> {
    let mut key = Zeroizing::new(vec![0u8; 32]);
    rand::thread_rng().fill_bytes(&mut key);
    let bytes = encrypt_file_key(profile, &key);
    let check = if verify {
        let verified = kss_crypto::ciphertext::verify(&bytes)
            .map_err(ClientError::InvalidCiphertext)
            .context("a freshly encrypted ciphertext")?;
        Some((verified, key))
    } else {
        None
    };
    Ok(CtEntry {
        id: ciphertext_id(&bytes).to_vec(),
        bytes,
        check,
    })
}

fn prepare_profile(
    profile: Profile,
    request_type: RequestType,
    path: String,
    distinct: usize,
    with_repeat: bool,
    verify: bool,
) -> anyhow::Result<LoadProfile> {
    let ciphertexts = (0..distinct)
        .map(|_| make_ciphertext(&profile, verify))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let repeat = if with_repeat {
        Some(make_ciphertext(&profile, verify)?)
    } else {
        None
    };
    let template = RequestBody {
        keyserver_id: profile.keyserver_id().to_hex(),
        profile_id: profile.profile_id().to_hex(),
        device_id: profile.device_id().to_hex(),
        request_type: request_type as i32,
        auth_meta: vec![MetaInfo {
            meta: path,
            complete: true,
        }],
        cryptographic_id: Vec::new(),
        ciphertext: Vec::new(),
        timestamp_ms: 0,
        nonce: Vec::new(),
        registration: None,
    };
    Ok(LoadProfile {
        profile,
        template,
        ciphertexts,
        repeat,
    })
}

async fn worker(plan: Arc<Plan>, start: tokio::time::Instant) -> anyhow::Result<WorkerStats> {
    let mut stats = WorkerStats {
        latency_us: Some(new_histogram()?),
        ..WorkerStats::default()
    };
    let deadline = plan.deadline_after.map(|d| start + d);
    let profiles = plan.profiles.len() as u64;
    loop {
        let i = plan.next.fetch_add(1, Ordering::Relaxed);
        if plan.requests.is_some_and(|n| i >= n) {
            break;
        }
        let due = if plan.rate > 0.0 {
            start + Duration::from_secs_f64(i as f64 / plan.rate)
        } else {
            tokio::time::Instant::now()
        };
        if deadline.is_some_and(|d| due >= d) {
            break;
        }
        if plan.rate > 0.0 {
            tokio::time::sleep_until(due).await;
        }

        let lp = &plan.profiles[(i % profiles) as usize];
        let round = i / profiles;
        let ct = if lp.ciphertexts.is_empty() && lp.repeat.is_none() {
            None
        } else {
            let repeat = lp.repeat.is_some()
                && (lp.ciphertexts.is_empty()
                    || rand::thread_rng().r#gen::<f64>() < plan.repeat_share);
            if repeat {
                lp.repeat.as_ref()
            } else {
                lp.ciphertexts
                    .get((round % lp.ciphertexts.len() as u64) as usize)
            }
        };
        let mut body = lp.template.clone();
        if let Some(ct) = ct {
            body.ciphertext.clone_from(&ct.bytes);
            body.cryptographic_id.clone_from(&ct.id);
        }
        body.timestamp_ms = now_ms();
        body.nonce = fresh_nonce();
        let message = sign_request(&lp.profile, &body);
        let client = &plan.clients[(i % plan.clients.len() as u64) as usize];
        if due < start + plan.warmup {
            // Warming up: sent, not counted.
            let _ = client.approve_raw(message).await;
            continue;
        }
        stats.sent += 1;
        let result = client.approve_raw(message).await;
        let latency = tokio::time::Instant::now().saturating_duration_since(due);
        if let Some(interval) = &plan.interval {
            let mut i = interval.lock().unwrap_or_else(|p| p.into_inner());
            match &result {
                Ok(response) => {
                    let micros = u64::try_from(latency.as_micros()).unwrap_or(u64::MAX);
                    i.latency_us.saturating_record(micros.max(1));
                    if response.decision == Decision::Approved as i32 {
                        i.approved += 1;
                    } else {
                        i.denied += 1;
                    }
                }
                Err(_) => i.errors += 1,
            }
        }
        match result {
            Ok(response) => {
                let micros = u64::try_from(latency.as_micros()).unwrap_or(u64::MAX);
                if let Some(hist) = stats.latency_us.as_mut() {
                    hist.saturating_record(micros.max(1));
                }
                if response.decision == Decision::Approved as i32 {
                    stats.approved += 1;
                    if plan.verify
                        && let Some(ct) = ct
                        && let Some((verified, key)) = &ct.check
                    {
                        let profile = lp.profile.clone();
                        let verified = verified.clone();
                        let key = key.clone();
                        let share = response.decryption_share;
                        // Two pairings and more: off the async workers.
                        let ok = tokio::task::spawn_blocking(move || {
                            combine_file_key(&profile, &verified, &share)
                                .is_ok_and(|k| k.as_slice() == key.as_slice())
                        })
                        .await
                        .unwrap_or(false);
                        if ok {
                            stats.verified += 1;
                        } else {
                            stats.verify_failures += 1;
                        }
                    }
                } else {
                    let name = if response.decision == Decision::Denied as i32 {
                        deny_reason_name(response.reason)
                    } else {
                        format!(
                            "decision_{}",
                            Decision::try_from(response.decision)
                                .map(decision_name)
                                .unwrap_or("unknown")
                        )
                    };
                    *stats.denied.entry(name).or_default() += 1;
                }
            }
            Err(e) => {
                let name = match e.grpc_code() {
                    Some(code) => format!("{code:?}"),
                    None => "client".to_owned(),
                };
                *stats.errors.entry(name).or_default() += 1;
            }
        }
    }
    Ok(stats)
}

fn merge(total: &mut WorkerStats, stats: WorkerStats) -> anyhow::Result<()> {
    total.sent += stats.sent;
    total.approved += stats.approved;
    total.verified += stats.verified;
    total.verify_failures += stats.verify_failures;
    for (k, v) in stats.denied {
        *total.denied.entry(k).or_default() += v;
    }
    for (k, v) in stats.errors {
        *total.errors.entry(k).or_default() += v;
    }
    if let (Some(t), Some(h)) = (total.latency_us.as_mut(), stats.latency_us.as_ref()) {
        t.add(h).context("merging latency histograms")?;
    }
    Ok(())
}
