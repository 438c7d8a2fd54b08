//! Line charts as SVG for docs/benchmarks.md: y against x on a log scale
//! (CIDRs 10 … 100,000), one polyline per series, a legend; written by
//! hand (a few primitives) so that the report needs no font or drawing
//! library.

use std::fmt::Write as _;

/// One line of a chart.
#[derive(Clone, Debug)]
pub struct Series {
    pub name: String,
    /// `#rrggbb`.
    pub color: &'static str,
    pub dashed: bool,
    /// (x, y), x > 0.
    pub points: Vec<(f64, f64)>,
}

/// A chart: its title, axis labels and lines.
#[derive(Clone, Debug)]
pub struct Chart {
    pub title: String,
    pub x_label: String,
    pub y_label: String,
    pub series: Vec<Series>,
}

/// An image of the report: written beside the Markdown as `file`.
#[derive(Clone, Debug)]
pub struct Figure {
    pub file: String,
    pub alt: String,
    pub svg: String,
}

const W: f64 = 760.0;
const H: f64 = 420.0;
const LEFT: f64 = 70.0;
const RIGHT: f64 = 230.0;
const TOP: f64 = 40.0;
const BOTTOM: f64 = 55.0;

/// A round step for about `n` ticks up to `max`.
fn step(max: f64, n: f64) -> f64 {
    let raw = (max / n).max(f64::MIN_POSITIVE);
    let mag = 10f64.powf(raw.log10().floor());
    [1.0, 2.0, 2.5, 5.0, 10.0]
        .into_iter()
        .map(|m| m * mag)
        .find(|s| *s >= raw)
        .unwrap_or(10.0 * mag)
}

fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

impl Chart {
    /// The chart as a standalone SVG document.
    pub fn to_svg(&self) -> String {
        let points = self.series.iter().flat_map(|s| s.points.iter());
        let (mut x0, mut x1, mut y1) = (f64::MAX, f64::MIN, 0.0f64);
        for &(x, y) in points.filter(|(x, y)| *x > 0.0 && y.is_finite()) {
            x0 = x0.min(x);
            x1 = x1.max(x);
            y1 = y1.max(y);
        }
        if x0 > x1 {
            (x0, x1) = (1.0, 10.0);
        }
        let (lx0, lx1) = (
            x0.log10().floor(),
            x1.log10().ceil().max(x0.log10().floor() + 1.0),
        );
        let ystep = step(y1.max(1.0) * 1.05, 6.0);
        let ymax = (y1.max(1.0) * 1.05 / ystep).ceil() * ystep;
        let (pw, ph) = (W - LEFT - RIGHT, H - TOP - BOTTOM);
        let px = |x: f64| LEFT + (x.log10() - lx0) / (lx1 - lx0) * pw;
        let py = |y: f64| TOP + ph - y.max(0.0) / ymax * ph;
        let mut s = String::new();
        let _ = write!(
            s,
            r##"<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{H}" viewBox="0 0 {W} {H}" font-family="sans-serif" font-size="12">
<rect width="100%" height="100%" fill="#ffffff"/>
<text x="{}" y="22" text-anchor="middle" font-size="14" font-weight="bold">{}</text>
"##,
            LEFT + pw / 2.0,
            escape(&self.title)
        );
        // Grid and ticks.
        let mut y = 0.0;
        while y <= ymax + ystep / 2.0 {
            let _ = writeln!(
                s,
                r##"<line x1="{LEFT}" y1="{0:.1}" x2="{1:.1}" y2="{0:.1}" stroke="#dddddd"/><text x="{2:.1}" y="{3:.1}" text-anchor="end">{4}</text>"##,
                py(y),
                LEFT + pw,
                LEFT - 6.0,
                py(y) + 4.0,
                y
            );
            y += ystep;
        }
        let mut e = lx0;
        while e <= lx1 + 0.5 {
            let x = 10f64.powf(e);
            let _ = writeln!(
                s,
                r##"<line x1="{0:.1}" y1="{TOP}" x2="{0:.1}" y2="{1:.1}" stroke="#dddddd"/><text x="{0:.1}" y="{2:.1}" text-anchor="middle">{3}</text>"##,
                px(x),
                TOP + ph,
                TOP + ph + 18.0,
                super::table::thousands(x)
            );
            e += 1.0;
        }
        let _ = writeln!(
            s,
            r##"<rect x="{LEFT}" y="{TOP}" width="{pw}" height="{ph}" fill="none" stroke="#333333"/>
<text x="{0:.1}" y="{1:.1}" text-anchor="middle">{2}</text>
<text x="16" y="{3:.1}" text-anchor="middle" transform="rotate(-90 16 {3:.1})">{4}</text>"##,
            LEFT + pw / 2.0,
            H - 14.0,
            escape(&self.x_label),
            TOP + ph / 2.0,
            escape(&self.y_label)
        );
        for (i, series) in self.series.iter().enumerate() {
            let mut pts: Vec<(f64, f64)> = series
                .points
                .iter()
                .copied()
                .filter(|(x, y)| *x > 0.0 && y.is_finite())
                .collect();
            pts.sort_by(|a, b| a.0.total_cmp(&b.0));
            let line: Vec<String> = pts
                .iter()
                .map(|&(x, y)| format!("{:.1},{:.1}", px(x), py(y)))
                .collect();
            let dash = if series.dashed {
                r#" stroke-dasharray="6 4""#
            } else {
                ""
            };
            let _ = writeln!(
                s,
                r#"<polyline points="{}" fill="none" stroke="{}" stroke-width="2"{dash}/>"#,
                line.join(" "),
                series.color
            );
            for &(x, y) in &pts {
                let _ = writeln!(
                    s,
                    r#"<circle cx="{:.1}" cy="{:.1}" r="3" fill="{}"/>"#,
                    px(x),
                    py(y),
                    series.color
                );
            }
            let ly = TOP + 10.0 + i as f64 * 20.0;
            let lx = LEFT + pw + 14.0;
            let _ = writeln!(
                s,
                r#"<line x1="{lx}" y1="{ly}" x2="{0}" y2="{ly}" stroke="{1}" stroke-width="2"{dash}/><text x="{2}" y="{3}">{4}</text>"#,
                lx + 26.0,
                series.color,
                lx + 32.0,
                ly + 4.0,
                escape(&series.name)
            );
        }
        s.push_str("</svg>\n");
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_series_is_drawn_with_its_points_and_legend() {
        let chart = Chart {
            title: "a <b>".into(),
            x_label: "CIDRs".into(),
            y_label: "ns".into(),
            series: vec![
                Series {
                    name: "one".into(),
                    color: "#1f77b4",
                    dashed: false,
                    points: vec![(10.0, 100.0), (100_000.0, 300.0), (1_000.0, 150.0)],
                },
                Series {
                    name: "two".into(),
                    color: "#ff7f0e",
                    dashed: true,
                    points: vec![(10.0, 50.0), (100_000.0, f64::NAN)],
                },
            ],
        };
        let svg = chart.to_svg();
        assert!(svg.starts_with("<svg") && svg.ends_with("</svg>\n"));
        assert_eq!(svg.matches("<polyline").count(), 2);
        // NaN is left out: 3 + 1 points.
        assert_eq!(svg.matches("<circle").count(), 4);
        assert!(svg.contains("a &lt;b&gt;") && svg.contains(">one<") && svg.contains(">two<"));
        assert!(svg.contains("stroke-dasharray"));
        // x from 10 to 100,000: five decades, six labels.
        assert!(svg.contains(">100,000<") && svg.contains(">10<"));
        // The points are drawn in x order: 10, 1,000, 100,000 left to right.
        let line = svg.split("<polyline points=\"").nth(1).unwrap_or("");
        let xs: Vec<f64> = line
            .split('"')
            .next()
            .unwrap_or("")
            .split(' ')
            .filter_map(|p| p.split(',').next()?.parse().ok())
            .collect();
        assert_eq!(xs.len(), 3);
        assert!(xs[0] < xs[1] && xs[1] < xs[2], "{xs:?}");
    }

    #[test]
    fn ticks_are_round() {
        assert_eq!(step(1050.0, 6.0), 200.0);
        assert_eq!(step(90.0, 6.0), 20.0);
        assert_eq!(step(14.0, 6.0), 2.5);
    }
}
