//! Small hand-written SVG line charts for drill reports (no plotting dependency).

use std::fmt::Write as _;

/// One line of a chart.
pub struct Series<'a> {
    pub name: &'a str,
    pub color: &'a str,
    /// Dashed line.
    pub dashed: bool,
    pub points: Vec<(f64, f64)>,
}

fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

/// A line chart over x in `[x0, x1]` and y in `[y0, y1]`, with a legend.
pub fn line_chart(
    title: &str,
    x_label: &str,
    y_label: &str,
    (x0, x1): (f64, f64),
    (y0, y1): (f64, f64),
    series: &[Series],
) -> String {
    let (w, h) = (720.0, 420.0);
    let (left, right, top, bottom) = (64.0, 170.0, 40.0, 50.0);
    let pw = w - left - right;
    let ph = h - top - bottom;
    let xspan = if x1 > x0 { x1 - x0 } else { 1.0 };
    let yspan = if y1 > y0 { y1 - y0 } else { 1.0 };
    let px = |x: f64| left + (x - x0) / xspan * pw;
    let py = |y: f64| top + ph - (y.clamp(y0, y1) - y0) / yspan * ph;
    let mut s = String::new();
    let _ = writeln!(
        s,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" viewBox="0 0 {w} {h}" font-family="sans-serif" font-size="12">"#
    );
    let _ = writeln!(s, r#"<rect width="{w}" height="{h}" fill="white"/>"#);
    let _ = writeln!(
        s,
        r#"<text x="{}" y="22" text-anchor="middle" font-size="15">{}</text>"#,
        left + pw / 2.0,
        esc(title)
    );
    // Grid and ticks: 5 steps on each axis.
    for i in 0..=5 {
        let f = i as f64 / 5.0;
        let y = y0 + f * yspan;
        let _ = writeln!(
            s,
            r##"<line x1="{left}" x2="{}" y1="{py:.1}" y2="{py:.1}" stroke="#ddd"/><text x="{}" y="{:.1}" text-anchor="end">{y:.2}</text>"##,
            left + pw,
            left - 6.0,
            py(y) + 4.0,
            py = py(y)
        );
        let x = x0 + f * xspan;
        let _ = writeln!(
            s,
            r#"<text x="{:.1}" y="{}" text-anchor="middle">{}</text>"#,
            px(x),
            top + ph + 18.0,
            (x.round() as i64)
        );
    }
    let _ = writeln!(
        s,
        r#"<rect x="{left}" y="{top}" width="{pw}" height="{ph}" fill="none" stroke="black"/>"#
    );
    let _ = writeln!(
        s,
        r#"<text x="{}" y="{}" text-anchor="middle">{}</text>"#,
        left + pw / 2.0,
        h - 12.0,
        esc(x_label)
    );
    let _ = writeln!(
        s,
        r#"<text transform="translate(16 {}) rotate(-90)" text-anchor="middle">{}</text>"#,
        top + ph / 2.0,
        esc(y_label)
    );
    for (k, se) in series.iter().enumerate() {
        let pts: Vec<String> = se
            .points
            .iter()
            .filter(|(_, y)| y.is_finite())
            .map(|(x, y)| format!("{:.1},{:.1}", px(*x), py(*y)))
            .collect();
        let dash = if se.dashed {
            r#" stroke-dasharray="6 4""#
        } else {
            ""
        };
        let _ = writeln!(
            s,
            r#"<polyline fill="none" stroke="{}" stroke-width="2"{dash} points="{}"/>"#,
            se.color,
            pts.join(" ")
        );
        let ly = top + 14.0 + 20.0 * k as f64;
        let lx = left + pw + 12.0;
        let _ = writeln!(
            s,
            r#"<line x1="{lx}" x2="{}" y1="{ly}" y2="{ly}" stroke="{}" stroke-width="2"{dash}/><text x="{}" y="{}">{}</text>"#,
            lx + 22.0,
            se.color,
            lx + 28.0,
            ly + 4.0,
            esc(se.name)
        );
    }
    s.push_str("</svg>\n");
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chart_is_well_formed_svg_with_every_series() {
        let svg = line_chart(
            "acc <clean>",
            "round",
            "accuracy",
            (1.0, 3.0),
            (0.0, 1.0),
            &[
                Series {
                    name: "clean",
                    color: "#1f77b4",
                    dashed: false,
                    points: vec![(1.0, 0.5), (2.0, 0.7), (3.0, 0.8)],
                },
                Series {
                    name: "attacked",
                    color: "#d62728",
                    dashed: true,
                    points: vec![(1.0, 0.4), (2.0, f64::NAN), (3.0, 0.2)],
                },
            ],
        );
        assert!(svg.starts_with("<svg") && svg.trim_end().ends_with("</svg>"));
        assert_eq!(svg.matches("<polyline").count(), 2);
        assert!(svg.contains("acc &lt;clean&gt;"));
        // NaN points are left out, the others are inside the plot area.
        assert!(!svg.contains("NaN"));
    }
}
