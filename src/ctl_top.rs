//! `baton ctl top`: a live view of the relay, refreshed every second —
//! sessions, packet and drop rates per worker, latency, transfers, ports,
//! and the newest sessions.

use std::fmt::Write as _;
use std::io::Write as _;
use std::time::{Duration, Instant};

use baton_control::{Client, ClientError};
use baton_proto::v1::{self, request::Command, response::Result as Reply};

/// Screen control: clear and move home (ANSI; every terminal in use).
const CLEAR: &str = "\x1b[2J\x1b[H";
/// Sessions listed at most.
const SESSION_ROWS: usize = 15;

async fn snapshot(
    client: &Client,
) -> Result<(v1::GetStatsResponse, Vec<v1::SessionSummary>), ClientError> {
    let Reply::GetStats(stats) = client
        .call(Command::GetStats(v1::GetStatsRequest {}))
        .await?
    else {
        return Err(ClientError::Protocol(
            "unexpected answer to get_stats".into(),
        ));
    };
    let Reply::ListSessions(list) = client
        .call(Command::ListSessions(v1::ListSessionsRequest {}))
        .await?
    else {
        return Err(ClientError::Protocol(
            "unexpected answer to list_sessions".into(),
        ));
    };
    Ok((stats, list.sessions))
}

/// One screen, from the stats now and those `elapsed` ago (rates need both).
pub fn render(
    now: &v1::GetStatsResponse,
    before: Option<(&v1::GetStatsResponse, Duration)>,
    sessions: &[v1::SessionSummary],
    now_unix_ms: u64,
) -> String {
    let rate = |current: u64, pick: &dyn Fn(&v1::GetStatsResponse) -> u64| -> String {
        match before {
            Some((previous, elapsed)) if !elapsed.is_zero() => format!(
                "{:.0}",
                current.saturating_sub(pick(previous)) as f64 / elapsed.as_secs_f64()
            ),
            Some(_) | None => "-".to_owned(),
        }
    };
    let mut out = String::new();
    let _ = writeln!(
        out,
        "baton {}   up {}s   sessions {}   control connections {}   subscribers {}",
        now.version, now.uptime_seconds, now.sessions, now.control_connections, now.subscribers
    );
    let _ = writeln!(
        out,
        "packets/s {}   drops/s {}   forwarded {}   dropped {}",
        rate(now.packets_forwarded, &|s| s.packets_forwarded),
        rate(now.packets_dropped, &|s| s.packets_dropped),
        now.packets_forwarded,
        now.packets_dropped
    );
    let _ = writeln!(
        out,
        "sessions created {}   timed out {}   transfers started {}   completed {}   failed {}   pending {}   refused {}",
        now.sessions_created,
        now.sessions_timed_out,
        now.transfers_started,
        now.transfers_completed,
        now.transfers_failed,
        now.transfers_pending,
        now.transfers_refused
    );
    for ports in &now.ports {
        let _ = writeln!(
            out,
            "ports {}: {} of {} pairs free",
            ports.ip, ports.free_pairs, ports.total_pairs
        );
    }
    let _ = writeln!(out);
    let _ = writeln!(
        out,
        "{:<7}{:>9}{:>11}{:>10}{:>11}{:>11}",
        "WORKER", "SESSIONS", "PACKETS/S", "DROPS/S", "P50 µs", "P99 µs"
    );
    for worker in &now.workers {
        let previous = before.and_then(|(p, elapsed)| {
            p.workers
                .iter()
                .find(|w| w.index == worker.index)
                .map(|w| (w, elapsed))
        });
        let per_second = |current: u64, pick: &dyn Fn(&v1::WorkerStats) -> u64| match previous {
            Some((p, elapsed)) if !elapsed.is_zero() => format!(
                "{:.0}",
                current.saturating_sub(pick(p)) as f64 / elapsed.as_secs_f64()
            ),
            Some(_) | None => "-".to_owned(),
        };
        let latency = worker.latency_us.unwrap_or_default();
        let _ = writeln!(
            out,
            "{:<7}{:>9}{:>11}{:>10}{:>11.0}{:>11.0}",
            worker.index,
            worker.sessions,
            per_second(worker.packets_forwarded, &|w| w.packets_forwarded),
            per_second(worker.packets_dropped, &|w| w.packets_dropped),
            latency.p50,
            latency.p99
        );
    }
    let _ = writeln!(out);
    let _ = writeln!(
        out,
        "{:<18}{:>8}  {:<28}  DEVICE",
        "SESSION", "AGE s", "CALL-ID"
    );
    let mut newest: Vec<&v1::SessionSummary> = sessions.iter().collect();
    newest.sort_by_key(|s| std::cmp::Reverse(s.created_unix_ms));
    for s in newest.iter().take(SESSION_ROWS) {
        let mut call_id = s.call_id.clone();
        if call_id.chars().count() > 28 {
            call_id = call_id.chars().take(27).collect::<String>() + "…";
        }
        let _ = writeln!(
            out,
            "{:<18}{:>8}  {:<28}  {}",
            s.session,
            now_unix_ms.saturating_sub(s.created_unix_ms) / 1000,
            call_id,
            s.gruu
        );
    }
    if sessions.len() > SESSION_ROWS {
        let _ = writeln!(out, "… and {} more", sessions.len() - SESSION_ROWS);
    }
    out
}

fn unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// Refreshes every `interval` until interrupted (or once with `once`,
/// after one interval, so that its rates are measured too).
pub async fn run(client: &Client, interval: Duration, once: bool) -> Result<(), ClientError> {
    let mut previous: Option<(v1::GetStatsResponse, Instant)> = None;
    if once {
        let (stats, _) = snapshot(client).await?;
        previous = Some((stats, Instant::now()));
        tokio::time::sleep(interval).await;
    }
    loop {
        let (stats, sessions) = snapshot(client).await?;
        let at = Instant::now();
        let screen = render(
            &stats,
            previous
                .as_ref()
                .map(|(p, then)| (p, at.saturating_duration_since(*then))),
            &sessions,
            unix_ms(),
        );
        let mut stdout = std::io::stdout().lock();
        let written = if once {
            write!(stdout, "{screen}")
        } else {
            write!(stdout, "{CLEAR}{screen}")
        };
        if written.and_then(|()| stdout.flush()).is_err() || once {
            return Ok(());
        }
        drop(stdout);
        previous = Some((stats, at));
        tokio::time::sleep(interval).await;
    }
}
