//! Medians, spreads and the Markdown tables the bench prints (ready for
//! BENCHMARKS.md).

use std::fmt::Write as _;

/// The median of `values` (the mean of the two middle ones for an even
/// count); NaN for none.
pub fn median(values: &[f64]) -> f64 {
    let mut v = values.to_vec();
    v.sort_by(f64::total_cmp);
    match v.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => v[n / 2],
        n => (v[n / 2 - 1] + v[n / 2]) / 2.0,
    }
}

/// Median and range of one figure over the rounds.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Spread {
    pub median: f64,
    pub min: f64,
    pub max: f64,
}

impl Spread {
    pub fn of(values: &[f64]) -> Self {
        Self {
            median: median(values),
            min: values.iter().copied().fold(f64::INFINITY, f64::min),
            max: values.iter().copied().fold(f64::NEG_INFINITY, f64::max),
        }
    }

    /// (max - min) / median, in percent.
    pub fn range_pct(&self) -> f64 {
        (self.max - self.min) / self.median.abs() * 100.0
    }

    /// `median (min–max)` with `digits` decimals.
    pub fn show(&self, digits: usize) -> String {
        format!(
            "{:.digits$} ({:.digits$}–{:.digits$})",
            self.median, self.min, self.max
        )
    }
}

/// `a[i] - b[i]` for each round.
pub fn minus(a: &[f64], b: &[f64]) -> Vec<f64> {
    a.iter().zip(b).map(|(a, b)| a - b).collect()
}

/// `a[i] / b[i]` for each round.
pub fn over(a: &[f64], b: &[f64]) -> Vec<f64> {
    a.iter().zip(b).map(|(a, b)| a / b).collect()
}

/// A Markdown table; columns after the first are right-aligned.
pub struct Table {
    header: Vec<String>,
    rows: Vec<Vec<String>>,
}

impl Table {
    pub fn new(header: &[&str]) -> Self {
        Self {
            header: header.iter().map(|h| h.to_string()).collect(),
            rows: Vec::new(),
        }
    }

    pub fn row(&mut self, cells: Vec<String>) {
        self.rows.push(cells);
    }

    pub fn render(&self) -> String {
        let mut out = String::new();
        let line = |cells: &[String]| format!("| {} |\n", cells.join(" | "));
        out.push_str(&line(&self.header));
        let rule: Vec<String> = (0..self.header.len())
            .map(|i| if i == 0 { "---" } else { "---:" }.to_string())
            .collect();
        out.push_str(&line(&rule));
        for row in &self.rows {
            out.push_str(&line(row));
        }
        out
    }
}

/// `1234567.8` as `1,234,568`.
pub fn thousands(x: f64) -> String {
    let digits = format!("{:.0}", x.abs());
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    if x < 0.0 && digits != "0" {
        out.insert(0, '-');
    }
    out
}

/// One line per round of `values`, for the record: `a / b / c`.
pub fn rounds(values: &[Vec<f64>], digits: usize) -> String {
    let rounds = values.first().map_or(0, Vec::len);
    let mut out = String::new();
    for r in 0..rounds {
        let cells: Vec<String> = values
            .iter()
            .map(|v| format!("{:.digits$}", v[r]))
            .collect();
        let _ = write!(out, "{}{}", if r > 0 { ", " } else { "" }, cells.join("/"));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn medians_of_odd_even_and_empty() {
        assert_eq!(median(&[3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(&[4.0, 1.0, 3.0, 2.0]), 2.5);
        assert!(median(&[]).is_nan());
    }

    #[test]
    fn spread_shows_median_and_range() {
        let s = Spread::of(&[480.0, 500.0, 520.0]);
        assert_eq!((s.median, s.min, s.max), (500.0, 480.0, 520.0));
        assert_eq!(s.range_pct(), 8.0);
        assert_eq!(s.show(0), "500 (480–520)");
    }

    #[test]
    fn per_round_differences_and_ratios() {
        let bare = [480.0, 500.0];
        let agent = [700.0, 760.0];
        assert_eq!(minus(&agent, &bare), [220.0, 260.0]);
        assert_eq!(over(&[10.0, 9.0], &[5.0, 3.0]), [2.0, 3.0]);
    }

    #[test]
    fn table_renders_markdown() {
        let mut t = Table::new(&["config", "ns/op"]);
        t.row(vec!["bare".into(), "483".into()]);
        assert_eq!(
            t.render(),
            "| config | ns/op |\n| --- | ---: |\n| bare | 483 |\n"
        );
    }

    #[test]
    fn thousands_group_digits() {
        assert_eq!(thousands(1_234_567.8), "1,234,568");
        assert_eq!(thousands(483.0), "483");
        assert_eq!(thousands(-1200.0), "-1,200");
        assert_eq!(thousands(0.2), "0");
    }

    #[test]
    fn rounds_list_each_configuration_per_round() {
        assert_eq!(rounds(&[vec![1.0, 2.0], vec![3.0, 4.0]], 0), "1/3, 2/4");
    }
}
