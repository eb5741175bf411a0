//! The SVG timeline: answers per bucket stacked by version, failures in
//! red on top, a vertical line at each switch. Plotters' SVG backend writes
//! `<text>` elements, so no font files are read.

use std::path::Path;

use anyhow::anyhow;
use plotters::prelude::*;

use loadgen::report::Timeline;

/// A vertical line on the plot.
#[derive(Debug, Clone)]
pub struct Mark {
    pub at_ns: u64,
    pub label: String,
    /// A switch (solid black) or the start of a run against another proxy (grey).
    pub kind: MarkKind,
}

/// What a [`Mark`] marks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MarkKind {
    Switch,
    RunStart,
}

const PALETTE: [RGBColor; 6] = [
    RGBColor(31, 119, 180), // first version seen (blue in the demo)
    RGBColor(44, 160, 44),  // second (green)
    RGBColor(255, 127, 14),
    RGBColor(148, 103, 189),
    RGBColor(140, 86, 75),
    RGBColor(127, 127, 127),
];
const FAILED: RGBColor = RGBColor(214, 39, 40);

/// What to draw besides the timeline.
#[derive(Debug, Clone)]
pub struct Decor<'a> {
    pub title: &'a str,
    pub marks: &'a [Mark],
    /// Legend names of versions (e.g. `0.0.1` → `0.0.1 (blue)`); unnamed ones show as they are.
    pub names: &'a [(String, String)],
    /// Width and height in pixels.
    pub size: (u32, u32),
}

/// Writes the timeline as an SVG file.
pub fn write_svg(path: &Path, tl: &Timeline, decor: &Decor<'_>) -> anyhow::Result<()> {
    let svg = render_svg(tl, decor)?;
    std::fs::write(path, svg)?;
    Ok(())
}

/// Renders the timeline to an SVG document.
pub fn render_svg(tl: &Timeline, decor: &Decor<'_>) -> anyhow::Result<String> {
    let mut out = String::new();
    {
        let root = SVGBackend::with_string(&mut out, decor.size).into_drawing_area();
        draw(&root, tl, decor).map_err(|e| anyhow!("drawing the plot: {e}"))?;
        root.present().map_err(|e| anyhow!("writing the plot: {e}"))?;
    }
    Ok(out)
}

type DrawResult<T> = Result<T, DrawingAreaErrorKind<<SVGBackend<'static> as DrawingBackend>::ErrorType>>;

fn draw(
    root: &DrawingArea<SVGBackend<'_>, plotters::coord::Shift>,
    tl: &Timeline,
    decor: &Decor<'_>,
) -> DrawResult<()> {
    let (marks, title) = (decor.marks, decor.title);
    root.fill(&WHITE)?;
    let secs = |ns: u64| ns as f64 / 1e9;
    let w = tl.bucket_ns;
    let x0 = secs(tl.start_ns);
    let x1 = secs(tl.start_ns + w * tl.buckets.len().max(1) as u64);
    let (x0, x1) = marks
        .iter()
        .fold((x0, x1), |(a, b), m| (a.min(secs(m.at_ns)), b.max(secs(m.at_ns))));
    let ymax = tl
        .buckets
        .iter()
        .map(|b| b.per_version.iter().sum::<u32>() + b.failed)
        .max()
        .unwrap_or(0)
        .max(1) as f64
        * 1.15;

    let mut chart = ChartBuilder::on(root)
        .caption(title, ("sans-serif", 18))
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(56)
        .build_cartesian_2d(x0..x1, 0f64..ymax)?;
    chart
        .configure_mesh()
        .disable_x_mesh()
        .y_label_formatter(&|v| format!("{v:.0}"))
        .x_desc("time (s)")
        .y_desc(format!("answers per {} ms", w / 1_000_000))
        .draw()?;

    // Stacked: layer k's top is the sum of layers 0..=k; failures are the top layer.
    // Drawn top-down so each lower layer paints over the ones above it.
    let nv = tl.versions.len();
    for layer in (0..=nv).rev() {
        let (color, label) = if layer == nv {
            (FAILED, "failed".to_string())
        } else {
            let v = &*tl.versions[layer];
            let name = decor
                .names
                .iter()
                .find(|(k, _)| k == v)
                .map_or_else(|| v.to_string(), |(_, n)| n.clone());
            (PALETTE[layer % PALETTE.len()], name)
        };
        let mut pts = Vec::with_capacity(tl.buckets.len() * 2);
        for (i, b) in tl.buckets.iter().enumerate() {
            let y: u32 = if layer < nv {
                b.per_version[..=layer].iter().sum()
            } else {
                b.per_version.iter().sum::<u32>() + b.failed
            };
            let t = secs(tl.start_ns + w * i as u64);
            pts.push((t, y as f64));
            pts.push((t + secs(w), y as f64));
        }
        chart
            .draw_series(AreaSeries::new(pts, 0.0, color.filled()))?
            .label(label)
            .legend(move |(x, y)| Rectangle::new([(x, y - 5), (x + 12, y + 5)], color.filled()));
    }

    for m in marks {
        let x = secs(m.at_ns);
        let (color, y) = match m.kind {
            MarkKind::Switch => (BLACK, ymax * 0.98),
            MarkKind::RunStart => (RGBColor(120, 120, 120), ymax * 0.93),
        };
        chart.draw_series(std::iter::once(PathElement::new(
            vec![(x, 0.0), (x, ymax)],
            color.stroke_width(1),
        )))?;
        chart.draw_series(std::iter::once(Text::new(
            format!(" {}", m.label),
            (x, y),
            ("sans-serif", 12).into_font().color(&color),
        )))?;
    }

    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::LowerRight)
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .draw()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use loadgen::report::timeline;
    use loadgen::sample::Sample;

    #[test]
    fn renders_an_svg_with_versions_failures_and_marks() {
        const MS: u64 = 1_000_000;
        let mut s: Vec<Sample> = (0..100)
            .map(|t| Sample::answered(t * MS, t * MS + MS, "0.0.1"))
            .collect();
        s.extend((100..200).map(|t| Sample::answered(t * MS, t * MS + MS, "0.0.2")));
        s.push(Sample::transport_error(150 * MS, 150 * MS, "x"));
        let tl = timeline(&s, 10 * MS);
        let marks = [
            Mark {
                at_ns: 100 * MS,
                label: "admin switch".into(),
                kind: MarkKind::Switch,
            },
            Mark {
                at_ns: 0,
                label: "proxy A".into(),
                kind: MarkKind::RunStart,
            },
        ];
        let names = [("0.0.1".to_string(), "0.0.1 (blue)".to_string())];
        let decor = Decor {
            title: "cut-over",
            marks: &marks,
            names: &names,
            size: (800, 400),
        };
        let svg = render_svg(&tl, &decor).unwrap();
        assert!(svg.contains("0.0.1 (blue)") && svg.contains("proxy A"));
        assert!(svg.starts_with("<svg"), "{}", &svg[..100.min(svg.len())]);
        assert!(svg.contains("admin switch"));
        assert!(svg.contains("0.0.1") && svg.contains("0.0.2") && svg.contains("failed"));
        assert!(
            svg.contains("#D62728")
                || svg.contains("rgb(214,39,40)")
                || svg.to_lowercase().contains("#d62728")
        );
    }
}
