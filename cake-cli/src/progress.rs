//! Progress of long work: a bar on a terminal; elsewhere (CI, `nohup`, a log file) one
//! line every N items (`CAKE_PROGRESS_EVERY=N`; by default a tenth of the work) and at
//! least every minute, with rate and ETA.

use std::io::IsTerminal;
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressStyle};

/// Progress over `total` items.
pub struct Progress {
    bar: Option<ProgressBar>,
    prefix: String,
    total: u64,
    done: u64,
    message: String,
    start: Instant,
    last_line: Instant,
    last_line_done: u64,
    /// Items between two lines off a terminal.
    every: u64,
}

/// The variable that sets the items between two progress lines off a terminal.
pub const PROGRESS_EVERY_VAR: &str = "CAKE_PROGRESS_EVERY";

/// Items between two progress lines over `total` items: `CAKE_PROGRESS_EVERY` when it is
/// set (a positive integer), else a tenth of the work. A value that is not a positive
/// integer is reported once per progress and ignored.
fn line_every(total: u64, setting: Option<&str>) -> u64 {
    let tenth = (total / 10).max(1);
    match setting.map(str::trim) {
        None | Some("") => tenth,
        Some(v) => match v.parse::<u64>() {
            Ok(n) if n > 0 => n,
            _ => {
                eprintln!(
                    "warning: {PROGRESS_EVERY_VAR}={v} is not a positive integer; a progress line every {tenth} items"
                );
                tenth
            }
        },
    }
}

/// Seconds between progress lines when nothing else triggers one.
const LINE_EVERY: Duration = Duration::from_secs(60);

impl Progress {
    /// Progress over `total` items named `prefix`.
    pub fn new(total: u64, prefix: impl Into<String>) -> Self {
        let prefix = prefix.into();
        let bar = std::io::stderr().is_terminal().then(|| {
            let bar = ProgressBar::new(total).with_style(
                ProgressStyle::with_template("{prefix:>32} [{bar:30}] {pos}/{len} {msg} eta {eta}")
                    .unwrap_or_else(|_| ProgressStyle::default_bar())
                    .progress_chars("=> "),
            );
            bar.set_prefix(prefix.clone());
            bar
        });
        let now = Instant::now();
        Self {
            bar,
            prefix,
            total,
            done: 0,
            message: String::new(),
            start: now,
            last_line: now,
            last_line_done: 0,
            every: line_every(total, std::env::var(PROGRESS_EVERY_VAR).ok().as_deref()),
        }
    }

    /// Replaces the message (e.g. a token rate).
    pub fn set_message(&mut self, message: String) {
        if let Some(bar) = &self.bar {
            bar.set_message(message.clone());
        }
        self.message = message;
    }

    /// Counts `n` more items done.
    pub fn inc(&mut self, n: u64) {
        self.done += n;
        if let Some(bar) = &self.bar {
            bar.inc(n);
            return;
        }
        let step = self.every;
        let due = self.done / step > self.last_line_done / step
            || self.last_line.elapsed() >= LINE_EVERY
            || self.done == self.total;
        if due {
            eprintln!("{}", self.line());
            self.last_line = Instant::now();
            self.last_line_done = self.done;
        }
    }

    /// Ends the display with `message`.
    pub fn finish(mut self, message: String) {
        match &self.bar {
            Some(bar) => bar.finish_with_message(message),
            None => {
                self.message = message;
                eprintln!("{}", self.line());
            }
        }
    }

    /// `prefix: done/total (pct), rate items/s, eta; message`.
    fn line(&self) -> String {
        let elapsed = self.start.elapsed().as_secs_f64();
        let rate = self.done as f64 / elapsed.max(1e-9);
        let left = self.total.saturating_sub(self.done) as f64;
        let eta = if self.done > 0 { left / rate } else { f64::NAN };
        format!(
            "{}: {}/{} ({:.0}%), {:.2} items/s, eta {}{}{}",
            self.prefix,
            self.done,
            self.total,
            100.0 * self.done as f64 / (self.total.max(1)) as f64,
            rate,
            duration(eta),
            if self.message.is_empty() { "" } else { "; " },
            self.message
        )
    }
}

/// `1h02m`, `3m05s`, `42s`, or `?` when unknown.
fn duration(seconds: f64) -> String {
    if !seconds.is_finite() {
        return "?".into();
    }
    let s = seconds.round() as u64;
    match (s / 3600, s % 3600 / 60, s % 60) {
        (0, 0, s) => format!("{s}s"),
        (0, m, s) => format!("{m}m{s:02}s"),
        (h, m, _) => format!("{h}h{m:02}m"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_show_count_rate_and_eta() {
        assert_eq!(duration(42.4), "42s");
        assert_eq!(duration(185.0), "3m05s");
        assert_eq!(duration(3720.0), "1h02m");
        assert_eq!(duration(f64::NAN), "?");
        let mut p = Progress::new(40, "cake synth_kv");
        p.bar = None;
        p.done = 10;
        p.set_message("12 tok/s".into());
        let line = p.line();
        assert!(line.starts_with("cake synth_kv: 10/40 (25%), "), "{line}");
        assert!(line.ends_with("; 12 tok/s"), "{line}");
        assert!(line.contains("items/s, eta "), "{line}");
    }

    #[test]
    fn lines_come_every_n_items_when_set() {
        assert_eq!(line_every(200, None), 20);
        assert_eq!(line_every(5, None), 1);
        assert_eq!(line_every(200, Some("7")), 7);
        assert_eq!(line_every(200, Some("0")), 20);
        assert_eq!(line_every(200, Some("many")), 20);
        let mut p = Progress::new(10, "t");
        (p.bar, p.every) = (None, 3);
        let mut lines = Vec::new();
        for _ in 0..10 {
            let before = p.last_line_done;
            p.inc(1);
            if p.last_line_done != before {
                lines.push(p.done);
            }
        }
        // Every third item, and the last one.
        assert_eq!(lines, [3, 6, 9, 10]);
    }
}
