//! PNG plots with `plotters`' bitmap backend. Text is drawn with `ab_glyph`
//! from a TTF read at run time (DejaVu Sans from Debian's `fonts-dejavu-core`,
//! or `$TESSERA_BENCH_FONT`), so no fontconfig or freetype is needed.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use plotters::coord::combinators::IntoLogRange as _;
use plotters::prelude::*;

use crate::results::Results;

/// Where the font is looked for, in order.
const FONT_PATHS: [&str; 3] = [
    "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf",
    "/usr/share/fonts/TTF/DejaVuSans.ttf",
    "/usr/share/fonts/dejavu/DejaVuSans.ttf",
];

/// The font family name the charts use.
const FAMILY: &str = "sans-serif";

static FONT: OnceLock<Result<(), String>> = OnceLock::new();

fn font_path() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("TESSERA_BENCH_FONT") {
        return Some(PathBuf::from(p));
    }
    FONT_PATHS.iter().map(PathBuf::from).find(|p| p.is_file())
}

/// Registers the TTF with plotters once.
fn ensure_font() -> anyhow::Result<()> {
    FONT.get_or_init(|| {
        let path = font_path().ok_or_else(|| {
            "no TTF font found: install Debian's fonts-dejavu-core or set TESSERA_BENCH_FONT".to_owned()
        })?;
        let bytes = std::fs::read(&path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
        let bytes: &'static [u8] = Box::leak(bytes.into_boxed_slice());
        plotters::style::register_font(FAMILY, FontStyle::Normal, bytes)
            .map_err(|_| format!("{} is not a usable TTF", path.display()))
    })
    .clone()
    .map_err(|e| anyhow::anyhow!(e))
}

/// One line on a chart.
#[derive(Debug, Clone)]
pub struct Series {
    /// Legend text.
    pub label: String,
    /// Colour.
    pub color: RGBColor,
    /// Dashed (drawn as points only, joined thinly).
    pub thin: bool,
    /// `(x, y)` points; non-positive values are dropped (log axes).
    pub points: Vec<(f64, f64)>,
}

fn err<E: std::fmt::Debug>(e: E) -> anyhow::Error {
    anyhow::anyhow!("plotting: {e:?}")
}

/// A log-log line chart written to `path` as PNG.
pub fn line_chart(path: &Path, title: &str, x_desc: &str, y_desc: &str, series: &[Series]) -> anyhow::Result<()> {
    ensure_font()?;
    let series: Vec<Series> = series
        .iter()
        .map(|s| Series {
            points: s.points.iter().copied().filter(|(x, y)| *x > 0.0 && *y > 0.0).collect(),
            ..s.clone()
        })
        .filter(|s| !s.points.is_empty())
        .collect();
    anyhow::ensure!(!series.is_empty(), "{title}: nothing to plot");
    let xs = series.iter().flat_map(|s| s.points.iter().map(|p| p.0));
    let ys = series.iter().flat_map(|s| s.points.iter().map(|p| p.1));
    let (xmin, xmax) = xs.fold((f64::MAX, f64::MIN), |(a, b), x| (a.min(x), b.max(x)));
    let (ymin, ymax) = ys.fold((f64::MAX, f64::MIN), |(a, b), y| (a.min(y), b.max(y)));
    let root = BitMapBackend::new(path, (1000, 600)).into_drawing_area();
    root.fill(&WHITE).map_err(err)?;
    let mut chart = ChartBuilder::on(&root)
        .caption(title, (FAMILY, 22))
        .margin(18)
        .x_label_area_size(50)
        .y_label_area_size(80)
        .build_cartesian_2d(
            (xmin / 1.5..xmax * 1.5).log_scale(),
            (ymin / 2.0..ymax * 2.0).log_scale(),
        )
        .map_err(err)?;
    chart
        .configure_mesh()
        .x_desc(x_desc)
        .y_desc(y_desc)
        .label_style((FAMILY, 14))
        .axis_desc_style((FAMILY, 16))
        .draw()
        .map_err(err)?;
    for s in &series {
        let color = s.color;
        let width = if s.thin { 1 } else { 2 };
        chart
            .draw_series(LineSeries::new(s.points.clone(), color.stroke_width(width)))
            .map_err(err)?
            .label(s.label.clone())
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 24, y)], color.stroke_width(2)));
        chart
            .draw_series(s.points.iter().map(|p| Circle::new(*p, 3, color.filled())))
            .map_err(err)?;
    }
    chart
        .configure_series_labels()
        .label_font((FAMILY, 14))
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .position(SeriesLabelPosition::UpperLeft)
        .draw()
        .map_err(err)?;
    root.present().map_err(err)?;
    Ok(())
}

const TESSERA: RGBColor = RGBColor(0x1f, 0x77, 0xb4);
const TESSERA2: RGBColor = RGBColor(0x17, 0xbe, 0xcf);
const BAO_DEV: RGBColor = RGBColor(0xd6, 0x27, 0x28);
const BAO_DEV2: RGBColor = RGBColor(0xff, 0x98, 0x96);
const BAO_RAFT: RGBColor = RGBColor(0x94, 0x67, 0xbd);
const ECHO: RGBColor = RGBColor(0x7f, 0x7f, 0x7f);

/// Writes the run's plots into `dir`; returns `(file name, caption)` pairs.
pub fn write_all(r: &Results, dir: &Path) -> anyhow::Result<Vec<(String, String)>> {
    let mut out = Vec::new();
    let sweep = |pts: &[crate::results::SweepPoint], p99: bool| -> Vec<(f64, f64)> {
        pts.iter()
            .filter(|p| p.run.load.ok > 0)
            .map(|p| {
                let l = &p.run.load.latency;
                (p.offered, (if p99 { l.p99_us } else { l.p50_us }) as f64 / 1000.0)
            })
            .collect()
    };
    let bao_sweep = |o: &crate::tessera::Outcome<crate::results::BaoResults>| {
        o.measured().map(|b| b.sweep.clone()).unwrap_or_default()
    };
    let dev = bao_sweep(&r.bao_dev);
    let raft = bao_sweep(&r.bao_raft);
    let series = vec![
        Series {
            label: "Tessera mint p50".into(),
            color: TESSERA2,
            thin: true,
            points: sweep(&r.mint_sweep, false),
        },
        Series {
            label: "Tessera mint p99".into(),
            color: TESSERA,
            thin: false,
            points: sweep(&r.mint_sweep, true),
        },
        Series {
            label: "OpenBao dev token create p50".into(),
            color: BAO_DEV2,
            thin: true,
            points: sweep(&dev, false),
        },
        Series {
            label: "OpenBao dev token create p99".into(),
            color: BAO_DEV,
            thin: false,
            points: sweep(&dev, true),
        },
        Series {
            label: "OpenBao raft token create p99".into(),
            color: BAO_RAFT,
            thin: false,
            points: sweep(&raft, true),
        },
        Series {
            label: "mTLS echo (transport floor) p99".into(),
            color: ECHO,
            thin: true,
            points: sweep(&r.echo_sweep, true),
        },
    ];
    let file = "benchmarks-mint-latency.png";
    line_chart(
        &dir.join(file),
        "Mint latency against offered load (open loop)",
        "offered load (operations per second)",
        "latency (ms)",
        &series,
    )?;
    out.push((file.to_owned(), "Mint latency (p50, p99) against offered load: Tessera RequestToken vs OpenBao token create, with the mTLS echo as the floor.".to_owned()));

    let complete = r.complete.measured().cloned().unwrap_or_default();
    let tree = |o: &crate::tessera::Outcome<crate::results::BaoResults>| -> Vec<(f64, f64)> {
        o.measured()
            .map(|b| {
                b.revoke_tree
                    .iter()
                    .map(|t| (t.children as f64, t.took_us as f64 / 1000.0))
                    .collect()
            })
            .unwrap_or_default()
    };
    let series = vec![
        Series {
            label: "Tessera CompleteTask reply".into(),
            color: TESSERA2,
            thin: true,
            points: complete
                .iter()
                .map(|c| (c.grants.max(1) as f64, c.reply_us as f64 / 1000.0))
                .collect(),
        },
        Series {
            label: "Tessera: every subscribed verifier refuses".into(),
            color: TESSERA,
            thin: false,
            points: complete
                .iter()
                .map(|c| (c.grants.max(1) as f64, c.all_refused_us as f64 / 1000.0))
                .collect(),
        },
        Series {
            label: "OpenBao dev: revoke parent token".into(),
            color: BAO_DEV,
            thin: false,
            points: tree(&r.bao_dev),
        },
        Series {
            label: "OpenBao raft: revoke parent token".into(),
            color: BAO_RAFT,
            thin: false,
            points: tree(&r.bao_raft),
        },
    ];
    let file = "benchmarks-revocation.png";
    line_chart(
        &dir.join(file),
        "Revoking a whole task against its size",
        "grants in the task (OpenBao: child tokens of the parent)",
        "time (ms)",
        &series,
    )?;
    out.push((file.to_owned(), "Revocation time against task size: Tessera CompleteTask (reply, and every subscribed verifier refusing) vs OpenBao revoking a parent token with that many children.".to_owned()));
    Ok(out)
}
