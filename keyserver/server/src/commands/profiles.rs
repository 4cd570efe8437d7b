//! `kss profile list | show | revoke` and `kss enrollment create | list`: through the
//! running server's admin socket (it holds the identity that derives words and checks rows).

use std::time::Duration;

use anyhow::{Context, Result, anyhow};
use kss_proto::v1 as pb;
use kss_proto::v1::admin_client::AdminClient;
use serde_json::json;
use tonic::transport::Channel;

use super::admin_client;
use crate::data_dir::DataDir;

async fn admin(data_dir: &DataDir) -> Result<AdminClient<Channel>> {
    admin_client::connect(data_dir).await.ok_or_else(|| {
        anyhow!(
            "no keyserver is running on {} (its admin socket {} answers nothing): start `kss serve` first",
            data_dir.root.display(),
            data_dir.admin_socket().display()
        )
    })
}

fn profile_json(p: &pb::ProfileInfo) -> serde_json::Value {
    json!({
        "profile_id": p.profile_id,
        "device_id": p.device_id,
        "name": p.name,
        "words": p.words,
        "created_at_ms": p.created_at_ms,
        "intact": p.intact,
        "revoked": !p.revocations.is_empty(),
        "revocations": p.revocations.iter().map(|r| json!({
            "device_id": (!r.device_id.is_empty()).then_some(&r.device_id),
            "revoked_at_ms": r.revoked_at_ms,
            "reason": r.reason,
        })).collect::<Vec<_>>(),
    })
}

fn state_of(p: &pb::ProfileInfo) -> &'static str {
    if !p.intact {
        "TAMPERED"
    } else if p.revocations.is_empty() {
        "active"
    } else {
        "revoked"
    }
}

/// Every profile, in pages of 1000.
pub async fn list(data_dir: &DataDir, as_json: bool) -> Result<()> {
    let mut admin = admin(data_dir).await?;
    let mut after = String::new();
    if !as_json {
        println!("{:<32}  {:<32}  {:<8}  name", "profile", "device", "state");
    }
    loop {
        let page = admin
            .list_profiles(pb::ListProfilesRequest {
                after: after.clone(),
                limit: 1000,
            })
            .await?
            .into_inner()
            .profiles;
        for p in &page {
            if as_json {
                println!("{}", profile_json(p));
            } else {
                println!(
                    "{:<32}  {:<32}  {:<8}  {}",
                    p.profile_id,
                    p.device_id,
                    state_of(p),
                    p.name
                );
            }
        }
        match page.last() {
            Some(last) => after = last.profile_id.clone(),
            None => return Ok(()),
        }
    }
}

/// One profile, with its verification words.
pub async fn show(data_dir: &DataDir, profile: &str, as_json: bool) -> Result<()> {
    let p = admin(data_dir)
        .await?
        .get_profile(pb::GetProfileRequest {
            profile_id: profile.to_string(),
        })
        .await?
        .into_inner();
    if as_json {
        println!("{}", profile_json(&p));
        return Ok(());
    }
    println!("profile   {}", p.profile_id);
    println!("device    {}", p.device_id);
    println!("name      {}", p.name);
    println!("words     {}", p.words.join(" "));
    println!("state     {}", state_of(&p));
    for r in &p.revocations {
        let what = if r.device_id.is_empty() {
            "profile".to_string()
        } else {
            format!("device {}", r.device_id)
        };
        println!("revoked   {what} at {} ms: {}", r.revoked_at_ms, r.reason);
    }
    Ok(())
}

pub async fn revoke(
    data_dir: &DataDir,
    profile: &str,
    device: Option<&str>,
    reason: &str,
) -> Result<()> {
    let changed = admin(data_dir)
        .await?
        .revoke_profile(pb::RevokeProfileRequest {
            profile_id: profile.to_string(),
            device_id: device.unwrap_or_default().to_string(),
            reason: reason.to_string(),
        })
        .await?
        .into_inner()
        .changed;
    let what = match device {
        Some(d) => format!("device {d} of profile {profile}"),
        None => format!("profile {profile}"),
    };
    if changed {
        println!("{what} revoked: denied on every instance within its poll interval");
    } else {
        println!("{what} was already revoked");
    }
    Ok(())
}

/// Parses a duration such as `30m`, `12h`, `7d` or `3600` (seconds).
pub fn parse_ttl(text: &str) -> Result<Duration> {
    let (number, unit) = text
        .find(|c: char| !c.is_ascii_digit())
        .map_or((text, ""), |i| text.split_at(i));
    let n: u64 = number
        .parse()
        .with_context(|| format!("--ttl {text}: expected a number with s, m, h or d"))?;
    let secs = match unit {
        "" | "s" => n,
        "m" => n.saturating_mul(60),
        "h" => n.saturating_mul(3600),
        "d" => n.saturating_mul(86_400),
        other => {
            return Err(anyhow!(
                "--ttl {text}: unknown unit '{other}' (s, m, h or d)"
            ));
        }
    };
    Ok(Duration::from_secs(secs))
}

pub async fn create_enrollment(
    data_dir: &DataDir,
    uses: u32,
    ttl: Duration,
    note: &str,
    as_json: bool,
) -> Result<()> {
    let created = admin(data_dir)
        .await?
        .create_enrollment(pb::CreateEnrollmentRequest {
            uses,
            ttl_seconds: ttl.as_secs(),
            note: note.to_string(),
        })
        .await?
        .into_inner();
    if as_json {
        println!(
            "{}",
            json!({"id": created.id, "token": created.token, "expires_at_ms": created.expires_at_ms, "uses": uses})
        );
    } else {
        // The token on stdout alone, for scripts; the rest on stderr.
        eprintln!(
            "enrollment {} for {uses} onboarding(s), expires at {} ms (shown once; give it to the workstation: kss client onboard --enrollment-token)",
            created.id, created.expires_at_ms
        );
        println!("{}", created.token);
    }
    Ok(())
}

pub async fn list_enrollments(data_dir: &DataDir, as_json: bool) -> Result<()> {
    let rows = admin(data_dir)
        .await?
        .list_enrollments(pb::ListEnrollmentsRequest {})
        .await?
        .into_inner()
        .enrollments;
    if !as_json {
        println!(
            "{:<32}  {:>9}  {:>15}  {:>15}  note",
            "enrollment", "uses left", "created (ms)", "expires (ms)"
        );
    }
    for e in rows {
        if as_json {
            println!(
                "{}",
                json!({"id": e.id, "uses_total": e.uses_total, "uses_left": e.uses_left,
                       "created_at_ms": e.created_at_ms, "expires_at_ms": e.expires_at_ms, "note": e.note})
            );
        } else {
            println!(
                "{:<32}  {:>4} of {:<2}  {:>15}  {:>15}  {}",
                e.id, e.uses_left, e.uses_total, e.created_at_ms, e.expires_at_ms, e.note
            );
        }
    }
    Ok(())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn ttls_parse_with_units_and_errors_name_the_flag() {
        assert_eq!(parse_ttl("90").unwrap(), Duration::from_secs(90));
        assert_eq!(parse_ttl("30m").unwrap(), Duration::from_secs(1800));
        assert_eq!(parse_ttl("12h").unwrap(), Duration::from_secs(43_200));
        assert_eq!(parse_ttl("7d").unwrap(), Duration::from_secs(604_800));
        assert!(
            parse_ttl("7w")
                .unwrap_err()
                .to_string()
                .contains("--ttl 7w")
        );
        assert!(parse_ttl("h").is_err());
    }
}
