//! `kss-operator`: runs the controllers (`run`), or writes the CRDs (`crdgen`).

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context as _, Result, bail};
use clap::{Parser, Subcommand};
use kube::runtime::events::{Recorder, Reporter};
use tracing::{error, info, warn};

use kss_operator::desired::{DEFAULT_IMAGE, OperatorPods};
use kss_operator::guards::ImageAllowlist;
use kss_operator::leader::{self, Election};
use kss_operator::metrics::{self, Metrics};
use kss_operator::pki;
use kss_operator::reconcile::Context;
use kss_operator::{controller, crdgen};

/// kss-operator: runs key shard servers on Kubernetes from KeyShardCluster and KssPolicy
/// resources.
#[derive(Debug, Parser)]
#[command(name = "kss-operator", version)]
struct Cli {
    #[command(subcommand)]
    command: Command,
    /// Log format (logs go to standard error).
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text)]
    log_format: LogFormat,
}

/// `--log-format`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the controllers.
    Run(RunArgs),
    /// Write the CRD YAML files (one per kind) into DIR; with --check, fail if they differ.
    Crdgen {
        /// Where to write them.
        #[arg(default_value = "crds")]
        dir: PathBuf,
        /// Also write the CRD files into the Helm chart's crds/ folder.
        #[arg(long, default_value = "charts/kss-operator/crds")]
        chart_dir: PathBuf,
        /// Also write every CRD into this one file (the `kubectl apply` install bundle).
        #[arg(long, default_value = "manifests/install/00-crds.yaml")]
        bundle: PathBuf,
        /// Also rewrite the CRD reference between the markers of this README.
        #[arg(long, default_value = "README.md")]
        readme: PathBuf,
        /// Write nothing; exit 1 naming the stale files.
        #[arg(long)]
        check: bool,
    },
}

#[derive(Debug, clap::Args)]
struct RunArgs {
    /// Watch only this namespace (default: all namespaces). Same as one
    /// --watch-namespaces entry; both may be given.
    #[arg(long, env = "KSS_OPERATOR_NAMESPACE")]
    watch_namespace: Option<String>,
    /// Watch only these namespaces (comma-separated): the operator's watches and clients
    /// are namespaced, so it needs RBAC (Secrets included) in these namespaces only.
    #[arg(long, env = "KSS_OPERATOR_NAMESPACES", value_delimiter = ',')]
    watch_namespaces: Vec<String>,
    /// The keyserver image deployed when a KeyShardCluster names none.
    #[arg(long, env = "KSS_KEYSERVER_IMAGE", default_value = DEFAULT_IMAGE)]
    keyserver_image: String,
    /// Images a KeyShardCluster's spec.image may name (comma-separated): a repository
    /// (any tag or digest of it), a prefix ending in `/`, an exact reference, or `*`.
    /// Default: the repository of --keyserver-image. Others are refused (Valid=False,
    /// ImageNotAllowed) and nothing is deployed.
    #[arg(long, env = "KSS_OPERATOR_ALLOWED_IMAGES", value_delimiter = ',')]
    allowed_images: Vec<String>,
    /// Address of /metrics, /healthz and /readyz.
    #[arg(
        long,
        env = "KSS_OPERATOR_METRICS_LISTEN",
        default_value = "0.0.0.0:8080"
    )]
    metrics_listen: SocketAddr,
    /// Elect a leader with a Lease (run several replicas safely). Off: this replica
    /// reconciles at once (one replica only).
    #[arg(long, env = "KSS_OPERATOR_LEADER_ELECT", default_value_t = true, action = clap::ArgAction::Set)]
    leader_elect: bool,
    /// Namespace of the leader Lease (default: the pod's namespace, POD_NAMESPACE).
    #[arg(long, env = "POD_NAMESPACE")]
    lease_namespace: Option<String>,
    /// The namespace of the operator's own pods (the downward API's POD_NAMESPACE); with
    /// --pod-selector, the keyserver pods admit their admin port from those pods only.
    #[arg(long, env = "POD_NAMESPACE")]
    pod_namespace: Option<String>,
    /// The labels of the operator's own pods (`key=value`, comma-separated). With the pods'
    /// namespace, each keyserver pod's NetworkPolicy admits its admin port only from these
    /// pods; without them (an operator outside the cluster), from any source, the admin
    /// API's client certificate being its only guard.
    #[arg(long, env = "KSS_OPERATOR_POD_SELECTOR", value_delimiter = ',')]
    pod_selector: Vec<String>,
    /// Name of the leader Lease.
    #[arg(long, default_value = "kss-operator-leader")]
    lease_name: String,
    /// This replica's identity in the Lease (default: the pod name, POD_NAME, or host name).
    #[arg(long, env = "POD_NAME")]
    identity: Option<String>,
    /// How long the Lease lasts without renewal (seconds).
    #[arg(long, default_value_t = 15)]
    lease_duration_secs: u64,
    /// Validity of a new cluster CA, from its issue (seconds; default 10 years). At two
    /// thirds of its life a successor joins the trust bundle; the leaves move to it a
    /// sixth of the life later (README: CA rotation).
    #[arg(long, env = "KSS_CA_VALIDITY_SECS", default_value_t = pki::DEFAULT_CA_VALIDITY_SECS)]
    ca_validity_secs: u64,
    /// Validity of the leaf certificates (workstation, admin API, operator client), from
    /// their issue (seconds; default 90 days). They are renewed at two thirds of their life.
    #[arg(long, env = "KSS_LEAF_VALIDITY_SECS", default_value_t = pki::DEFAULT_LEAF_VALIDITY_SECS)]
    leaf_validity_secs: u64,
    /// How long a pod of a new revision may stay not Ready before the rolling update
    /// counts as stalled (seconds; like a Deployment's progressDeadlineSeconds): the
    /// cluster turns Degraded with reason RolloutStalled, naming the pod.
    #[arg(long, env = "KSS_ROLLOUT_DEADLINE_SECS", default_value_t = kss_operator::rollout::DEFAULT_DEADLINE_SECS)]
    rollout_deadline_secs: u64,
}

fn init_logging(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,kube=warn"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    if format == LogFormat::Json {
        builder.json().init();
    } else {
        builder.init();
    }
}

/// The operator's own pods, from `--pod-namespace` and `--pod-selector`; `None` unless
/// both are given.
fn operator_pods(args: &RunArgs) -> Result<Option<OperatorPods>> {
    let mut labels = BTreeMap::new();
    for entry in args
        .pod_selector
        .iter()
        .map(|e| e.trim())
        .filter(|e| !e.is_empty())
    {
        match entry.split_once('=') {
            Some((key, value)) if !key.trim().is_empty() => {
                labels.insert(key.trim().to_string(), value.trim().to_string());
            }
            _ => bail!("--pod-selector: {entry:?} is not key=value"),
        }
    }
    let namespace = args.pod_namespace.clone().filter(|n| !n.is_empty());
    Ok(match namespace {
        Some(namespace) if !labels.is_empty() => Some(OperatorPods { namespace, labels }),
        _ => None,
    })
}

/// `--watch-namespace` and `--watch-namespaces` together, without blanks or repeats;
/// empty: all namespaces.
fn watched_namespaces(args: &RunArgs) -> Vec<String> {
    let mut namespaces: Vec<String> = Vec::new();
    for ns in args.watch_namespace.iter().chain(&args.watch_namespaces) {
        let ns = ns.trim();
        if !ns.is_empty() && !namespaces.iter().any(|n| n == ns) {
            namespaces.push(ns.to_string());
        }
    }
    namespaces
}

fn host_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|_| format!("kss-operator-{}", std::process::id()))
}

async fn run(args: RunArgs) -> Result<()> {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let metrics = Arc::new(Metrics::default());
    let config = kube::Config::infer()
        .await
        .context("connecting to the Kubernetes API (in-cluster config or KUBECONFIG)")?;
    // Every request to the API server is counted (kss_operator_api_requests_total), so
    // that what a reconcile costs the API server can be read off /metrics.
    let counted = Arc::clone(&metrics);
    let client = kube::client::ClientBuilder::try_from(config)
        .context("building the Kubernetes client")?
        .with_layer(&tower::util::MapRequestLayer::new(
            move |request: http::Request<kube::client::Body>| {
                counted.observe_api_request(request.method().as_str(), request.uri().path());
                request
            },
        ))
        .build();
    tokio::spawn({
        let metrics = Arc::clone(&metrics);
        let addr = args.metrics_listen;
        async move {
            if let Err(e) = metrics::serve(addr, metrics).await {
                error!(error = %format!("{e:#}"), "metrics listener stopped");
            }
        }
    });
    let identity = args.identity.clone().unwrap_or_else(host_name);
    let reporter = Reporter {
        controller: "kss-operator".into(),
        instance: Some(identity.clone()),
    };
    let ctx = Arc::new(Context {
        client: client.clone(),
        recorder: Recorder::new(client.clone(), reporter),
        metrics: Arc::clone(&metrics),
        default_image: args.keyserver_image.clone(),
        images: ImageAllowlist::new(&args.allowed_images, &args.keyserver_image),
        validity: pki::Validity {
            ca: Duration::from_secs(args.ca_validity_secs.max(1)),
            leaf: Duration::from_secs(args.leaf_validity_secs.max(1)),
        },
        rollout_deadline: Duration::from_secs(args.rollout_deadline_secs.max(1)),
        operator_pods: operator_pods(&args)?,
    });
    match &ctx.operator_pods {
        Some(pods) => info!(
            namespace = %pods.namespace,
            labels = ?pods.labels,
            "keyserver admin ports admitted from the operator's pods only"
        ),
        None => warn!(
            "the operator's pods are unknown (--pod-selector and POD_NAMESPACE): the \
             keyservers' NetworkPolicies admit their admin port from any source"
        ),
    }
    info!(allowed_images = %ctx.images.entries().join(","), "image allowlist");
    let namespaces = watched_namespaces(&args);

    if !args.leader_elect {
        metrics.set_leader(true);
        controller::run(ctx, namespaces).await;
        return Ok(());
    }
    let Some(lease_namespace) = args
        .lease_namespace
        .clone()
        .or_else(|| args.watch_namespace.clone())
        .or_else(|| args.watch_namespaces.first().cloned())
    else {
        bail!("--leader-elect needs --lease-namespace (or POD_NAMESPACE, or --watch-namespace)");
    };
    let election = Election {
        namespace: lease_namespace,
        lease_name: args.lease_name.clone(),
        identity,
        lease_duration: Duration::from_secs(args.lease_duration_secs),
    };
    let mut leading = leader::start(client, &election).await?;
    info!("waiting to lead");
    leader::until_leading(&mut leading).await?;
    info!(identity = %election.identity, "leading: starting the controllers");
    metrics.set_leader(true);
    tokio::select! {
        _ = controller::run(ctx, namespaces) => Ok(()),
        _ = leader::until_lost(&mut leading) => {
            metrics.set_leader(false);
            bail!("lost the leader Lease: exiting so that only the new leader reconciles")
        }
    }
}

#[tokio::main]
async fn main() -> Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Command::Crdgen {
            dir,
            chart_dir,
            bundle,
            readme,
            check,
        } => {
            if check {
                let mut stale = crdgen::stale(&dir)?;
                stale.extend(crdgen::stale(&chart_dir)?);
                if crdgen::bundle_is_stale(&bundle)? {
                    stale.push(bundle.display().to_string());
                }
                if crdgen::reference_is_stale(&readme)? {
                    stale.push(format!("{} (CRD reference)", readme.display()));
                }
                if !stale.is_empty() {
                    bail!(
                        "stale CRDs (run `cargo run -p kss-operator -- crdgen`): {}",
                        stale.join(", ")
                    );
                }
                println!("CRDs in {} are up to date", dir.display());
                Ok(())
            } else {
                crdgen::write_all(&dir)?;
                crdgen::write_all(&chart_dir)?;
                crdgen::write_bundle(&bundle)?;
                crdgen::write_reference(&readme)
            }
        }
        Command::Run(args) => {
            init_logging(cli.log_format);
            run(args).await
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn watched_namespaces_join_both_flags_without_repeats() {
        let cli = Cli::try_parse_from([
            "kss-operator",
            "run",
            "--watch-namespace",
            "a",
            "--watch-namespaces",
            "b, a,,c",
            "--allowed-images",
            "reg.example/team/,ghcr.io/kss-project/kss",
        ])
        .expect("arguments");
        let Command::Run(args) = cli.command else {
            panic!("not run");
        };
        assert_eq!(watched_namespaces(&args), ["a", "b", "c"]);
        assert_eq!(args.allowed_images.len(), 2);
        let all = Cli::try_parse_from(["kss-operator", "run"]).expect("arguments");
        let Command::Run(args) = all.command else {
            panic!("not run");
        };
        assert!(watched_namespaces(&args).is_empty());
        let images = ImageAllowlist::new(&args.allowed_images, &args.keyserver_image);
        assert!(images.allows(DEFAULT_IMAGE));
    }
}
