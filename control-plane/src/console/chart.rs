//! Line charts as SVG, drawn on the server: a title, a y axis with round
//! gridlines, time labels on the x axis, a legend, and one line per
//! series. Colours are presentation attributes (the console's CSP allows
//! no inline style); every text is escaped.

use std::fmt::Write;

/// One line of a chart.
pub struct Series<'a> {
    pub name: &'a str,
    /// A colour name of [`color`].
    pub color: &'a str,
    pub values: Vec<f64>,
}

/// A chart to draw.
pub struct Chart<'a> {
    pub title: &'a str,
    /// What the y axis counts (e.g. "checks").
    pub unit: &'a str,
    /// The x label of each point.
    pub labels: Vec<String>,
    pub series: Vec<Series<'a>>,
}

const WIDTH: f64 = 720.0;
const HEIGHT: f64 = 260.0;
const LEFT: f64 = 60.0;
const RIGHT: f64 = 16.0;
const TOP: f64 = 40.0;
const BOTTOM: f64 = 36.0;
const X_LABELS: usize = 6;

/// The hex colour of a palette name.
pub fn color(name: &str) -> &'static str {
    match name {
        "blue" => "#2563eb",
        "red" => "#dc2626",
        "amber" => "#d97706",
        "violet" => "#7c3aed",
        "green" => "#059669",
        _ => "#475569",
    }
}

/// The top of the y axis: four gridline steps of 1, 2 or 5 × 10ⁿ (at
/// least 1, so counts get whole-number labels) reaching `max`.
fn nice_ceiling(max: f64) -> f64 {
    let rough = (max / 4.0).max(1.0);
    let magnitude = 10f64.powf(rough.log10().floor());
    let step =
        [1.0, 2.0, 5.0, 10.0].iter().map(|m| m * magnitude).find(|step| *step >= rough).unwrap_or(10.0 * magnitude);
    4.0 * step
}

fn escape(text: &str) -> String {
    text.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;").replace('"', "&quot;")
}

/// Whole numbers with thin separators (12 345), others with one decimal.
pub fn format_number(value: f64) -> String {
    if value.fract() != 0.0 {
        return format!("{value:.1}");
    }
    let digits = format!("{}", value as i64);
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i) % 3 == 0 && c.is_ascii_digit() {
            out.push('\u{202f}');
        }
        out.push(c);
    }
    out
}

/// The chart as an SVG element.
pub fn line_chart(chart: &Chart<'_>) -> String {
    let points = chart.labels.len();
    let max = chart.series.iter().flat_map(|s| s.values.iter().copied()).fold(0.0, f64::max);
    let ceiling = nice_ceiling(max);
    let plot_width = WIDTH - LEFT - RIGHT;
    let plot_height = HEIGHT - TOP - BOTTOM;
    let x = |i: usize| LEFT + if points > 1 { plot_width * i as f64 / (points - 1) as f64 } else { plot_width / 2.0 };
    let y = |v: f64| TOP + plot_height * (1.0 - v / ceiling);
    let mut svg = String::new();
    let _ = write!(
        svg,
        r#"<svg class="chart" viewBox="0 0 {WIDTH} {HEIGHT}" role="img" aria-labelledby="chart-title" xmlns="http://www.w3.org/2000/svg"><title id="chart-title">{title}</title>"#,
        title = escape(chart.title)
    );
    let _ = write!(
        svg,
        r##"<text x="{LEFT}" y="18" font-size="14" font-weight="600" fill="#0f172a">{}</text>"##,
        escape(chart.title)
    );
    // Legend, right-aligned on the title line.
    let mut legend_x = WIDTH - RIGHT;
    for series in chart.series.iter().rev() {
        legend_x -= 14.0 + 7.0 * series.name.len() as f64 + 12.0;
        let _ = write!(
            svg,
            r##"<rect x="{legend_x:.1}" y="9" width="10" height="10" rx="2" fill="{c}"/><text x="{:.1}" y="18" font-size="12" fill="#334155">{}</text>"##,
            legend_x + 14.0,
            escape(series.name),
            c = color(series.color)
        );
    }
    // Gridlines and y labels.
    for step in 0..=4 {
        let value = ceiling * f64::from(step) / 4.0;
        let gy = y(value);
        let _ = write!(
            svg,
            r##"<line x1="{LEFT}" y1="{gy:.1}" x2="{:.1}" y2="{gy:.1}" stroke="#e2e8f0" stroke-width="1"/><text x="{:.1}" y="{:.1}" font-size="11" text-anchor="end" fill="#64748b">{}</text>"##,
            WIDTH - RIGHT,
            LEFT - 8.0,
            gy + 4.0,
            format_number(value)
        );
    }
    let _ = write!(
        svg,
        r##"<text x="14" y="{:.1}" font-size="11" fill="#64748b" transform="rotate(-90 14 {:.1})" text-anchor="middle">{}</text>"##,
        TOP + plot_height / 2.0,
        TOP + plot_height / 2.0,
        escape(chart.unit)
    );
    // X labels, evenly spread.
    if points > 0 {
        let every = points.div_ceil(X_LABELS).max(1);
        for (i, label) in chart.labels.iter().enumerate().filter(|(i, _)| i % every == 0 || *i == points - 1) {
            if i == points - 1 && i % every != 0 && points - 1 - (i - i % every) < every / 2 {
                continue;
            }
            let anchor = if i == 0 {
                "start"
            } else if i == points - 1 {
                "end"
            } else {
                "middle"
            };
            let _ = write!(
                svg,
                r##"<text x="{:.1}" y="{:.1}" font-size="11" text-anchor="{anchor}" fill="#64748b">{}</text>"##,
                x(i),
                HEIGHT - BOTTOM + 18.0,
                escape(label)
            );
        }
    }
    let _ = write!(
        svg,
        r##"<line x1="{LEFT}" y1="{:.1}" x2="{:.1}" y2="{:.1}" stroke="#94a3b8" stroke-width="1"/>"##,
        TOP + plot_height,
        WIDTH - RIGHT,
        TOP + plot_height
    );
    for series in &chart.series {
        let path: Vec<String> =
            series.values.iter().enumerate().map(|(i, v)| format!("{:.1},{:.1}", x(i), y(*v))).collect();
        let _ = write!(
            svg,
            r#"<polyline fill="none" stroke="{}" stroke-width="2" stroke-linejoin="round" points="{}"/>"#,
            color(series.color),
            path.join(" ")
        );
        if points <= 60 {
            for (i, v) in series.values.iter().enumerate().filter(|(_, v)| **v > 0.0) {
                let _ = write!(
                    svg,
                    r#"<circle cx="{:.1}" cy="{:.1}" r="2.5" fill="{}"/>"#,
                    x(i),
                    y(*v),
                    color(series.color)
                );
            }
        }
    }
    svg.push_str("</svg>");
    svg
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ceilings_are_round() {
        assert_eq!(nice_ceiling(0.0), 4.0);
        assert_eq!(nice_ceiling(3.0), 4.0);
        assert_eq!(nice_ceiling(12.0), 20.0);
        assert_eq!(nice_ceiling(501.0), 800.0);
    }

    #[test]
    fn text_is_escaped_and_numbers_grouped() {
        let chart = Chart {
            title: "<script>",
            unit: "checks",
            labels: vec!["a".into(), "b".into()],
            series: vec![Series { name: "x&y", color: "blue", values: vec![1.0, 2.0] }],
        };
        let svg = line_chart(&chart);
        assert!(!svg.contains("<script>") && svg.contains("&lt;script&gt;") && svg.contains("x&amp;y"));
        assert_eq!(format_number(1234567.0), "1\u{202f}234\u{202f}567");
    }
}
