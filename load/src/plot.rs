//! A picture of what the remote received around each handoff: sequence
//! number and timestamp against arrival time, one colour per device, as
//! an SVG file.
//!
//! Written by hand: a scatter of a few thousand points with axes is a
//! page of SVG, while the plotting crates need a font stack (system fonts
//! or an embedded TTF) to lay out their labels, which a fresh machine with
//! only the Rust toolchain may not have.

use std::fmt::Write as _;

/// One packet as the remote received it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Sample {
    /// Arrival, nanoseconds on the generator's clock.
    pub arrived_ns: u64,
    /// RTP sequence number.
    pub seq: u16,
    /// RTP timestamp.
    pub ts: u32,
    /// The device that sent it (its generation: 0 is the first device).
    pub device: u8,
}

/// Most handoffs drawn.
const MAX_SWITCHES: usize = 4;
const PANEL_W: f64 = 420.0;
const PANEL_H: f64 = 220.0;
const MARGIN: f64 = 56.0;
const COLOURS: [&str; 6] = [
    "#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b",
];

/// The samples (in any order) drawn in a window of `window_ms` either side
/// of each change of device, at most four; `None` when no device took
/// over. `clock_rate` turns timestamps into milliseconds.
pub fn svg(samples: &[Sample], window_ms: f64, clock_rate: u32, title: &str) -> Option<String> {
    let mut samples = samples.to_vec();
    samples.sort_by_key(|s| s.arrived_ns);
    let switches: Vec<usize> = (1..samples.len())
        .filter(|&i| samples[i].device != samples[i - 1].device)
        .take(MAX_SWITCHES)
        .collect();
    if switches.is_empty() {
        return None;
    }
    let rows = switches.len() as f64;
    let width = 2.0 * (PANEL_W + MARGIN) + MARGIN;
    let height = rows * (PANEL_H + 2.0 * MARGIN) + 40.0;
    let mut out = String::new();
    let _ = write!(
        out,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" font-family="sans-serif" font-size="11">
<rect width="100%" height="100%" fill="white"/>
<text x="{x}" y="22" font-size="14" text-anchor="middle">{title}</text>
"#,
        x = width / 2.0,
        title = escape(title)
    );
    for (row, &at) in switches.iter().enumerate() {
        let zero = samples[at].arrived_ns;
        let in_window: Vec<(f64, &Sample)> = samples
            .iter()
            .map(|s| ((s.arrived_ns as f64 - zero as f64) / 1e6, s))
            .filter(|(x, _)| x.abs() <= window_ms)
            .collect();
        let first = in_window.first().map_or(samples[at], |(_, s)| **s);
        // Unwrapped against the window's first packet.
        let seq = |s: &Sample| f64::from(s.seq.wrapping_sub(first.seq) as i16);
        let ts_ms = |s: &Sample| {
            f64::from(s.ts.wrapping_sub(first.ts) as i32) * 1000.0 / f64::from(clock_rate.max(1))
        };
        let top = 40.0 + row as f64 * (PANEL_H + 2.0 * MARGIN) + MARGIN / 2.0;
        let label = format!(
            "handoff {}: device {} → device {}",
            row + 1,
            samples[at - 1].device + 1,
            samples[at].device + 1
        );
        panel(
            &mut out,
            MARGIN,
            top,
            &in_window,
            seq,
            window_ms,
            "sequence number",
            &label,
        );
        panel(
            &mut out,
            2.0 * MARGIN + PANEL_W,
            top,
            &in_window,
            ts_ms,
            window_ms,
            "timestamp (ms of media)",
            &label,
        );
    }
    out.push_str("</svg>\n");
    Some(out)
}

/// One panel: `value` of each point against its arrival (ms from the
/// switch), the switch as a dashed line.
#[allow(clippy::too_many_arguments)]
fn panel(
    out: &mut String,
    left: f64,
    top: f64,
    points: &[(f64, &Sample)],
    value: impl Fn(&Sample) -> f64,
    window_ms: f64,
    y_label: &str,
    title: &str,
) {
    let values: Vec<f64> = points.iter().map(|(_, s)| value(s)).collect();
    let (lo, hi) = values
        .iter()
        .fold((f64::MAX, f64::MIN), |(lo, hi), v| (lo.min(*v), hi.max(*v)));
    let (lo, hi) = if lo <= hi {
        (lo, hi.max(lo + 1.0))
    } else {
        (0.0, 1.0)
    };
    let x_of = |ms: f64| left + (ms + window_ms) / (2.0 * window_ms) * PANEL_W;
    let y_of = |v: f64| top + PANEL_H - (v - lo) / (hi - lo) * PANEL_H;
    let _ = write!(
        out,
        r##"<g><rect x="{left}" y="{top}" width="{PANEL_W}" height="{PANEL_H}" fill="none" stroke="#888"/>
<text x="{cx}" y="{ty}" text-anchor="middle">{title}</text>
<line x1="{zx}" y1="{top}" x2="{zx}" y2="{bottom}" stroke="#444" stroke-dasharray="4 3"/>
<text x="{left}" y="{lx}" >-{window_ms} ms</text><text x="{zx}" y="{lx}" text-anchor="middle">0 (switch)</text><text x="{right}" y="{lx}" text-anchor="end">+{window_ms} ms</text>
<text x="{yl}" y="{cy}" text-anchor="middle" transform="rotate(-90 {yl} {cy})">{y_label}</text>
<text x="{tick}" y="{bottom}" text-anchor="end">{lo:.0}</text><text x="{tick}" y="{ttop}" text-anchor="end">{hi:.0}</text>
"##,
        cx = left + PANEL_W / 2.0,
        ty = top - 6.0,
        zx = x_of(0.0),
        bottom = top + PANEL_H,
        lx = top + PANEL_H + 16.0,
        right = left + PANEL_W,
        yl = left - 34.0,
        cy = top + PANEL_H / 2.0,
        tick = left - 4.0,
        ttop = top + 10.0,
    );
    for ((ms, sample), v) in points.iter().zip(&values) {
        let _ = writeln!(
            out,
            r#"<circle cx="{:.1}" cy="{:.1}" r="2" fill="{}"/>"#,
            x_of(*ms),
            y_of(*v),
            COLOURS[usize::from(sample.device) % COLOURS.len()]
        );
    }
    let mut devices: Vec<u8> = points.iter().map(|(_, s)| s.device).collect();
    devices.sort_unstable();
    devices.dedup();
    for (i, device) in devices.iter().enumerate() {
        let y = top + 14.0 + i as f64 * 14.0;
        let _ = writeln!(
            out,
            r#"<circle cx="{x}" cy="{cy}" r="4" fill="{c}"/><text x="{tx}" y="{ty}">device {n}</text>"#,
            x = left + 10.0,
            cy = y - 4.0,
            c = COLOURS[usize::from(*device) % COLOURS.len()],
            tx = left + 18.0,
            ty = y,
            n = device + 1
        );
    }
    out.push_str("</g>\n");
}

fn escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stream(device: u8, from_ms: u64, count: u64, seq: u16, ts: u32) -> Vec<Sample> {
        (0..count)
            .map(|i| Sample {
                arrived_ns: (from_ms + 20 * i) * 1_000_000,
                seq: seq.wrapping_add(i as u16),
                ts: ts.wrapping_add(160 * i as u32),
                device,
            })
            .collect()
    }

    #[test]
    fn each_handoff_gets_a_row_with_both_devices_and_the_switch() {
        let mut samples = stream(0, 0, 50, 65_500, 4_294_967_000);
        samples.extend(stream(1, 1000, 50, 14, 7_000));
        samples.extend(stream(0, 2000, 50, 64, 15_000));
        let svg = svg(&samples, 200.0, 8000, "a & b").expect("two handoffs");
        assert!(svg.starts_with("<svg") && svg.ends_with("</svg>\n"));
        assert_eq!(
            svg.matches("0 (switch)").count(),
            4,
            "two rows of two panels"
        );
        assert!(svg.contains("handoff 1: device 1 → device 2"));
        assert!(svg.contains("handoff 2: device 2 → device 1"));
        assert!(svg.contains("a &amp; b"));
        assert!(svg.contains(COLOURS[0]) && svg.contains(COLOURS[1]));
        // Only the packets within 200 ms of a switch: 11 either side, twice
        // per row (two panels), plus the legend circles.
        let points = svg.matches("r=\"2\"").count();
        assert_eq!(points, 2 * 2 * (10 + 11), "{points}");
    }

    #[test]
    fn no_handoff_no_picture() {
        assert!(svg(&stream(0, 0, 10, 1, 1), 200.0, 8000, "x").is_none());
        assert!(svg(&[], 200.0, 8000, "x").is_none());
    }
}
